"""tuner.fast.attention: the varlen attention for packed rows (its CPU fallback here; tests/gpu runs the kernel)."""

from __future__ import annotations

import pytest
import torch

from tuner.data.pack import PackedCollator, sample_boundaries
from tuner.fast.attention import (
    NAME,
    block_causal_mask,
    boundaries_from_position_ids,
    register,
    unavailable_reason,
    use_varlen_attention,
)


def test_collator_boundaries_match_the_position_ids():
    rows = [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 2]},
        {"input_ids": [4, 5, 6, 7, 8], "labels": [-100, 5, 6, -100, 8], "position_ids": [0, 1, 2, 0, 1]},
    ]
    batch = PackedCollator(boundaries=True)(rows)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 6, 8]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 3
    cu, longest = boundaries_from_position_ids(batch["position_ids"])
    assert cu.tolist() == batch["cu_seq_lens_q"].tolist() and longest == 3
    assert "cu_seq_lens_q" not in PackedCollator()(rows)  # off unless the attention needs it
    assert "cu_seq_lens_q" not in PackedCollator(flatten=False, boundaries=True)(rows)  # one row only


def test_a_row_not_starting_at_zero_is_one_sample_from_its_start():
    assert sample_boundaries([5, 6, 0, 1])["cu_seq_lens_q"].tolist() == [0, 2, 4]
    assert boundaries_from_position_ids(torch.tensor([[5, 6, 0, 1]]))[0].tolist() == [0, 2, 4]


def test_block_causal_mask_is_exact():
    mask = block_causal_mask(torch.tensor([[0, 1, 0, 1, 2]]), 5)[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]


def test_padding_mask_still_applies(tiny_tokenizer):
    """With an attention_mask (padded batches, generation) the implementation is plain SDPA."""
    from tests.tiny import build_model

    register()
    model = build_model("llama", tiny_tokenizer).float().eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        model.set_attn_implementation(NAME)
        ours = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(ours[mask.bool()], reference[mask.bool()])


def test_generation_matches_sdpa(tiny_tokenizer):
    """Sample answers during training generate with the training model: prefill + KV-cache steps."""
    from tests.tiny import build_model

    register()
    model = build_model("qwen2", tiny_tokenizer).float().eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        reference = model.generate(ids, max_new_tokens=6, do_sample=False)
        model.set_attn_implementation(NAME)
        ours = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert ours.tolist() == reference.tolist()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_not_used_without_a_gpu(tiny_tokenizer):
    from tests.tiny import build_model

    model = build_model("llama", tiny_tokenizer)
    model.set_attn_implementation("sdpa")
    assert unavailable_reason() == "no CUDA GPU"
    assert use_varlen_attention(model) == (False, "no CUDA GPU")
    assert model.config._attn_implementation == "sdpa"


def test_cudnn_for_one_sample_needs_to_be_asked_for_and_a_gpu():
    from tuner.fast import attention

    attention.register(cudnn_one_sample=False)
    assert attention.cudnn_for_one_sample() is False
    attention.register(cudnn_one_sample=True)  # the default again, for the tests after this one
    assert attention.cudnn_for_one_sample() is False  # no CUDA here: the varlen path is not taken either


def test_unpadded_rows_skip_transformers_packed_sample_scan_when_switched_on(monkeypatch):
    # The scan reads a GPU tensor on the host (a sync per forward); tuner_varlen's mask builder returns
    # no mask for unpadded rows whatever it finds, so where registered with skip_packed_scan it is skipped.
    # Padded rows (an attention mask), generation (a cache) and other attentions keep transformers' path.
    from transformers import LlamaConfig, masking_utils

    register()
    config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=1)
    config._attn_implementation = NAME
    scans = []
    scan = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(
        masking_utils, "find_packed_sequence_indices", lambda ids: scans.append(ids) or scan(ids)
    )
    embeds, positions = torch.zeros(1, 5, 16), torch.tensor([[0, 1, 2, 0, 1]])

    def causal_mask(attention_mask=None, cache=None):
        return masking_utils.create_causal_mask(config, embeds, attention_mask, cache, position_ids=positions)

    for value, scanned in {False: 1, True: 0}.items():  # True, the default, stays registered after
        register(skip_packed_scan=value)
        scans.clear()
        assert causal_mask() is None
        assert len(scans) == scanned, value
    padded = causal_mask(attention_mask=torch.tensor([[1, 1, 1, 1, 0]]))
    assert padded is not None and not bool(padded[0, 0, 4, 4])  # the padding stays masked
    assert len(scans) == 0  # a padded batch: transformers' own path, which needs no scan
    config._attn_implementation = "sdpa"  # another attention: its mask may need the scan
    masking_utils.create_causal_mask(config, embeds, None, None, position_ids=positions)
    assert len(scans) == 1
