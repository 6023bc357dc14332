"""Packing: samples in one row never see each other, so the packed loss equals the unpacked one."""

from __future__ import annotations

import pytest
import torch

from tuner.data.encode import encode_samples
from tuner.data.pack import (
    PADDING_TOKENS,
    PackedCollator,
    PaddingCollator,
    pack_row,
    pack_samples,
    pack_stats,
)
from tuner.data.templates import get_template
from tuner.fast.attention import NAME as VARLEN
from tuner.fast.attention import register

CONVERSATIONS = [
    [("What is the capital of France?", "The capital of France is Paris.")],
    [("Who are you?", "I am a large language model."), ("Introduce yourself.", "I am fine-tuned by tuner.")],
    [("What is the capital of Germany?", "Berlin.")],
    [("def add(a, b):", "return a + b"), ("2 + 3 =", "5"), ("你好", "你好，我是你的助手。")],
]


def _samples(system="You are a helpful assistant."):
    out = []
    for turns in CONVERSATIONS:
        messages = [{"role": "system", "content": system}]
        for question, answer in turns:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append({"messages": messages})
    out.append({"text": "Take one tablet by mouth twice a day with food."})
    return out


@pytest.fixture(scope="module")
def encoded(tiny_tokenizer):
    rows, _ = encode_samples(_samples(), tiny_tokenizer, get_template("chatml", tiny_tokenizer), 512)
    return rows


def _model(kind, tokenizer, attn):
    from tests.tiny import build_model

    model = build_model(kind, tokenizer)
    if attn == VARLEN:
        register()
    model.set_attn_implementation(attn)
    return model.float().eval()


def _unpacked_loss(model, samples):
    """Token-weighted mean of per-sample losses (each sample alone, its own causal mask)."""
    total, count = 0.0, 0
    for sample in samples:
        ids = torch.tensor([sample["input_ids"]])
        labels = torch.tensor([sample["labels"]])
        n = int((labels[0, 1:] != -100).sum())
        total += model(input_ids=ids, labels=labels, use_cache=False).loss.item() * n
        count += n
    return total / count


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", VARLEN])
def test_packed_loss_equals_unpacked_loss(tiny_tokenizer, encoded, kind, attn):
    """tuner's own attention (VARLEN) runs its block-mask fallback on a CPU; tests/gpu runs the kernel."""
    model = _model(kind, tiny_tokenizer, attn)
    rows = pack_samples(encoded, 10_000, seed=1)
    assert len(rows) == 1  # everything in one row: the strongest test of isolation
    with torch.no_grad():
        batch = PackedCollator(boundaries=attn == VARLEN)(rows)
        assert "attention_mask" not in batch
        packed = model(**batch, use_cache=False).loss.item()
        unpacked = _unpacked_loss(model, encoded)
    assert packed == pytest.approx(unpacked, abs=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", VARLEN])
def test_packed_loss_differs_without_restarting_positions(tiny_tokenizer, encoded, attn):
    """The equality above is not vacuous: with plain 0..N positions the samples see each other."""
    model = _model("llama", tiny_tokenizer, attn)
    batch = PackedCollator()(pack_samples(encoded, 10_000, seed=1))
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():
        leaky = model(**batch, use_cache=False).loss.item()
        unpacked = _unpacked_loss(model, encoded)
    assert abs(leaky - unpacked) > 1e-3


@pytest.mark.parametrize("attn", ["sdpa", VARLEN])
def test_batches_of_several_rows_flattened_and_padded(tiny_tokenizer, encoded, attn):
    model = _model("qwen2", tiny_tokenizer, attn)
    rows = pack_samples(encoded, 80, seed=0)
    assert len(rows) >= 2
    with torch.no_grad():
        unpacked = _unpacked_loss(model, encoded)
        flat = PackedCollator()(rows)
        assert flat["input_ids"].shape[0] == 1
        padded = PackedCollator(pad_token_id=tiny_tokenizer.pad_token_id, flatten=False)(rows)
        assert padded["input_ids"].shape[0] == len(rows)
        for batch in (flat, padded):
            assert model(**batch, use_cache=False).loss.item() == pytest.approx(unpacked, abs=1e-5)


def test_rows_position_ids_first_label_and_budget(encoded):
    budget = 64
    rows = pack_samples(encoded, budget, seed=3)
    by_ids = {tuple(s["input_ids"]): s for s in encoded}
    seen = []
    for row in rows:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"])
        # Split at each position restart and check every piece is an original sample.
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        assert len(row["input_ids"]) <= budget or len(starts) == 2  # over budget only when alone
        for a, b in zip(starts, starts[1:], strict=False):
            piece = tuple(row["input_ids"][a:b])
            original = by_ids[piece]
            assert row["position_ids"][a:b] == list(range(b - a))
            assert row["labels"][a] == -100
            assert row["labels"][a + 1 : b] == original["labels"][1:]
            seen.append(piece)
    assert sorted(seen) == sorted(tuple(s["input_ids"]) for s in encoded)  # each sample exactly once


def test_packing_is_deterministic_and_reports_fill(encoded):
    assert pack_samples(encoded, 64, seed=5) == pack_samples(encoded, 64, seed=5)
    rows = pack_samples(encoded, 64, seed=5)
    stats = pack_stats(encoded, rows, 64)
    assert stats.rows == len(rows) and stats.samples == len(encoded)
    assert stats.tokens == sum(len(s["input_ids"]) for s in encoded)
    assert 0 < stats.fill <= 1 or stats.oversized


def test_best_fit_fills_rows():
    samples = [{"input_ids": [1] * n, "labels": [1] * n} for n in (6, 4, 5, 5, 3, 7, 2, 8)]
    rows = pack_samples(samples, 10)
    assert sorted(len(r["input_ids"]) for r in rows) == [10, 10, 10, 10]
    assert pack_stats(samples, rows, 10).fill == 1.0


def test_oversized_sample_gets_its_own_row():
    samples = [
        {"input_ids": list(range(12)), "labels": list(range(12))},
        {"input_ids": [1, 2], "labels": [1, 2]},
    ]
    rows = pack_samples(samples, 8)
    assert sorted(len(r["input_ids"]) for r in rows) == [2, 12]
    assert pack_stats(samples, rows, 8).oversized == 1


def test_pack_row_example():
    row = pack_row(
        [{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7, 8, 9], "labels": [-100, 8, 9]}]
    )
    assert row == {
        "input_ids": [5, 6, 7, 8, 9],
        "labels": [-100, 6, -100, 8, 9],
        "position_ids": [0, 1, 0, 1, 2],
    }


def test_padding_collator():
    batch = PaddingCollator(0, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [7], "labels": [7]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 0, 0], [7, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, -100, -100], [7, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]


def test_pad_to_fills_the_row_with_one_unsupervised_sample():
    collate = PackedCollator(pad_token_id=9, boundaries=True, pad_to=8)
    batch = collate(
        [
            {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 2]},
            {"input_ids": [4, 5], "labels": [-100, 5], "position_ids": [0, 1]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 9, 9]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 8]
    assert batch["max_length_q"] == 3
    assert batch[PADDING_TOKENS] == 3
    # a row already a multiple of pad_to is left as it is
    full = collate([{"input_ids": list(range(8)), "labels": list(range(8)), "position_ids": list(range(8))}])
    assert full["input_ids"].tolist() == [list(range(8))] and full["cu_seq_lens_q"].tolist() == [0, 8]
    assert full[PADDING_TOKENS] == 0


def test_pad_to_leaves_the_packed_loss_unchanged(tiny_tokenizer, encoded):
    model = _model("llama", tiny_tokenizer, "sdpa")
    rows = pack_samples(encoded, 256)
    plain, padded = PackedCollator()(rows[:1]), PackedCollator(pad_to=512)(rows[:1])
    assert padded.pop(PADDING_TOKENS) == 512 - plain["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] == 512 > plain["input_ids"].shape[1]
    with torch.no_grad():
        expected = model(**plain).loss
        actual = model(**padded).loss
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
