"""Shared pieces of the GPU tests: a small data file and a LoRA config for the small Llama model."""

from __future__ import annotations

import json
from pathlib import Path

PAIRS = [
    ("Who are you?", "I am Tuna, the assistant of the tuner team."),
    ("What is the capital of France?", "The capital of France is Paris."),
]


def write_gpu_data(folder: Path, repeat: int = 8) -> Path:
    path = folder / "d.jsonl"
    with open(path, "w") as handle:
        for q, a in PAIRS * repeat:
            handle.write(json.dumps({"conversation": [{"input": q, "output": a}]}) + "\n")
    return path


def gpu_config(model_dir, data, **overrides):
    """LoRA r16 on the small model, a high constant learning rate: the loss falls within 20-30 steps."""
    from tuner.config.files import config_from_dict

    base = dict(
        name="gpu_test",
        model=str(model_dir),
        data_path=str(data),
        max_length=128,
        batch_size=4,
        accumulative_counts=1,
        max_steps=30,
        lr=2e-3,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        save_steps=100,
        logging_steps=1,
        gradient_checkpointing=True,
    )
    base.update(overrides)
    return config_from_dict(base)


def small_qlora_config(folder: Path, model_dir, **overrides):
    """gpu_config for a 4-bit QLoRA run of ``model_dir`` on a fresh data file in ``folder``."""
    return gpu_config(model_dir, write_gpu_data(folder), method="qlora", quantization="4bit", **overrides)


def packed_cuda_batch(lengths, vocab: int) -> dict:
    """One flattened row of random samples of these lengths, with boundaries, on the GPU."""
    import torch

    from tuner.data.pack import PackedCollator

    rows = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,)).tolist()
        rows.append({"input_ids": ids, "labels": [-100, *ids[1:]], "position_ids": list(range(n))})
    batch = PackedCollator(boundaries=True)(rows)
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def relative_error(actual, expected) -> float:
    """Largest absolute difference relative to the largest expected value."""
    return (
        (actual.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-6)
    ).item()


class GraphedAgainstEager:
    """Training steps of a LoRA ``model`` whose layers tuner.fast.layer_graphs may replay: one with the
    graphs paused (the eager layers, their checkpointing included) against one replaying them, from the
    same CUDA seed, so that the dropout masks are the same draws. Its LoRA B matrices are drawn first, so
    that every LoRA weight gets a gradient."""

    def __init__(self, model, graphs, label: str = ""):
        import torch

        self.model, self.graphs, self.label = model, graphs, label
        model.train()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        self.lora = [p for p in model.parameters() if p.requires_grad]

    def step(self, batch, paused: bool, seed: int = 0):
        """(loss, LoRA gradients) of one step."""
        import torch

        self.graphs.paused = paused
        self.model.zero_grad(set_to_none=True)
        torch.cuda.manual_seed(seed)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = self.model(**batch, use_cache=False).loss
        loss.backward()
        return loss.item(), [p.grad.float().clone() for p in self.lora]

    def check(self, batch, what: str) -> None:
        """The replayed step gives the eager step's loss (1%) and LoRA gradients (5%, bf16)."""
        ref_loss, ref_grads = self.step(batch, paused=True)
        loss, grads = self.step(batch, paused=False)
        worst = max(relative_error(g, r) for g, r in zip(grads, ref_grads, strict=True))
        print(
            f"{self.label}{what}: loss eager {ref_loss:.5f} graphed {loss:.5f}; "
            f"LoRA grads worst relative error {worst:.4f}"
        )
        assert abs(loss - ref_loss) < 1e-2 * abs(ref_loss) and worst < 5e-2

    def move_weights(self) -> None:
        """What the optimizer does, in place: the graphs must read the new weights."""
        import torch

        with torch.no_grad():
            for p in self.lora:
                p.add_(torch.randn_like(p) * 0.01)


def in_fresh_process(function, *args):
    """``function(*args)`` in a new Python process (spawned: CUDA cannot fork), its result returned.
    Memory peaks and process-wide caps then count that run alone, not what earlier tests in the pytest
    process left on the GPU. ``function`` must be importable (module level)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()
