"""Does this model keep packed samples apart? Asked of the model itself before training on packed rows.

Packing relies on the model turning restarting ``position_ids`` into a block-causal mask (transformers'
own architectures do; tuner's varlen attention does from the collator's boundaries). A model whose
attention ignores them (remote-code models with their own attention, e.g. InternLM2) would let every
sample attend to the samples before it in its row: training would run and the loss would fall, but
on contexts the model never sees at inference. No error would ever show it, so tuner checks.

The check: the same sample packed after two different samples of equal length. Isolated, its logits
are the same numbers in both rows, up to rounding (every linear layer works row by row, the other
sample's keys are masked to exact zeros, and both rows have one shape, so the kernels are the same);
leaking, they differ by far more. Two short forward passes, once per run; a model that fails it trains
one sample per row (tuner.train).
"""

from __future__ import annotations

from tuner.data.pack import pack_row

# Largest difference between the two logits tensors, relative to their largest logit, at which the
# sample still counts as isolated. Room for kernels whose rounding depends on the whole batch
# (bitsandbytes' 8-bit matmul picks outlier columns over all rows); a leak changes logits by more than
# 20% even in a 2-layer random model (tests/test_packing_probe.py).
ISOLATED_RTOL = 2e-2
PROBE_LENGTHS = (13, 11)  # the sample in front, the probed sample


def packs_in_isolation(model, collator, vocab_size: int) -> bool:
    """True when ``model`` computes a packed sample's logits as if it were alone in its row, on
    batches made by ``collator`` (the one training uses, boundaries included)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    low = min(vocab_size - 1, 10)  # clear of special tokens at the start of most vocabularies

    def tokens(n):
        return torch.randint(low, vocab_size, (n,), generator=generator).tolist()

    front, other_front, probed = tokens(PROBE_LENGTHS[0]), tokens(PROBE_LENGTHS[0]), tokens(PROBE_LENGTHS[1])
    logits = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout; fused LoRA layers take peft's own path
    try:
        with torch.no_grad():
            for prefix in (front, other_front):
                row = pack_row(
                    [{"input_ids": prefix, "labels": prefix}, {"input_ids": probed, "labels": probed}]
                )
                batch = collator([row])
                batch.pop("labels")
                batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                out = model(**batch, use_cache=False).logits[0, len(prefix) :].float()
                logits.append(out)
    finally:
        model.train(was_training)
    difference = (logits[0] - logits[1]).abs().max()
    scale = logits[1].abs().max().clamp_min(1e-6)
    return bool(difference <= ISOLATED_RTOL * scale)
