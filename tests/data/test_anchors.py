"""Anchor marks (tuner.data.anchors): "anchor": true (a whole answer) or "kl" (a KL probe) on a record
survives reading, encoding (cached or not), packing and batching; records without it read exactly as
before; a wrong value is named; a probe never reaches the cross-entropy."""

from __future__ import annotations

import json

import pytest

from tests.tiny import QA
from tuner.data.anchors import (
    ANCHOR,
    ANCHOR_LABELS,
    IGNORE,
    KL_ONLY,
    move_anchor_labels,
    without_anchor_marks,
)
from tuner.data.answer_quality import language_of
from tuner.data.encode import encode_samples
from tuner.data.encode_cache import encode_cached
from tuner.data.formats import load_samples
from tuner.data.identity import make_identity
from tuner.data.pack import PackedCollator, PaddingCollator, pack_samples
from tuner.data.templates import get_template


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _conversation(question, answer, **extra):
    return {"conversation": [{"input": question, "output": answer}], **extra}


@pytest.mark.parametrize(
    "fmt, record",
    [
        ("conversation", _conversation("Q?", "A.", anchor=True)),
        (
            "openai",
            {
                "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
                "anchor": True,
            },
        ),
        ("alpaca", {"instruction": "Q?", "input": "", "output": "A.", "anchor": True}),
        (
            "sharegpt",
            {
                "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}],
                "anchor": True,
            },
        ),
    ],
)
def test_the_mark_reaches_the_sample_in_every_chat_format(tmp_path, fmt, record):
    plain = {key: value for key, value in record.items() if key != ANCHOR}
    path = _write(tmp_path / "d.jsonl", [record, plain, {**plain, ANCHOR: False}, {**plain, ANCHOR: KL_ONLY}])
    result = load_samples(path, "auto")
    assert result.format == fmt and not result.problems
    marked, unmarked, false, probe = result.samples
    assert marked[ANCHOR] is True and probe[ANCHOR] == KL_ONLY
    assert ANCHOR not in unmarked and ANCHOR not in false  # files without the mark read as before
    assert marked["messages"] == unmarked["messages"]


def test_a_mark_that_is_not_a_boolean_is_named_with_its_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", [_conversation("Q?", "A."), _conversation("Q?", "A.", anchor="yes")])
    result = load_samples(path, "conversation")
    assert len(result.samples) == 1
    (problem,) = result.problems
    assert problem.line == 2 and problem.field == ANCHOR and 'true, false or "kl"' in str(problem)


def test_the_mark_survives_encoding_cached_or_not(workspace, tiny_tokenizer):
    samples = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA[:4]
    ]
    samples[1][ANCHOR] = True
    samples[3][ANCHOR] = KL_ONLY
    template = get_template("chatml")
    plain, _ = encode_samples(samples, tiny_tokenizer, template, 64)
    cached, _, reused = encode_cached(samples, tiny_tokenizer, template, 64)
    again, _, reused_again = encode_cached(samples, tiny_tokenizer, template, 64)
    assert not reused and reused_again
    assert plain == cached == again
    assert [row.get(ANCHOR) for row in cached] == [None, True, None, KL_ONLY]
    # Rows of unmarked samples have no extra key: every earlier data set encodes to what it did.
    assert set(cached[0]) == {"input_ids", "labels"}


def _rows(tiny_tokenizer, probe=False):
    samples = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA[:4]
    ]
    samples[1][ANCHOR] = True
    if probe:
        samples[2][ANCHOR] = KL_ONLY
    rows, _ = encode_samples(samples, tiny_tokenizer, get_template("chatml"), 64)
    return rows


def test_a_probe_trains_only_through_the_kl_term(tiny_tokenizer):
    rows = _rows(tiny_tokenizer, probe=True)
    moved = move_anchor_labels(rows)
    assert moved[2][ANCHOR_LABELS] == rows[2]["labels"] and set(moved[2]["labels"]) == {IGNORE}
    # Without the KL term a whole-answer anchor is an ordinary conversation; a probe is left out.
    kept, left_out = without_anchor_marks(rows)
    assert left_out == 1
    assert kept == [
        {"input_ids": r["input_ids"], "labels": r["labels"]} for i, r in enumerate(rows) if i != 2
    ]


def test_moving_the_labels_leaves_anchor_tokens_out_of_the_cross_entropy(tiny_tokenizer):
    rows = _rows(tiny_tokenizer)
    moved = move_anchor_labels(rows)
    assert all(set(row) == {"input_ids", "labels", ANCHOR_LABELS} for row in moved)
    assert moved[1][ANCHOR_LABELS] == rows[1]["labels"] and set(moved[1]["labels"]) == {IGNORE}
    for before, after in zip(rows[::2], moved[::2], strict=True):
        assert after["labels"] == before["labels"] and set(after[ANCHOR_LABELS]) == {IGNORE}


def test_anchor_labels_survive_packing_and_both_collators(tiny_tokenizer):
    moved = move_anchor_labels(_rows(tiny_tokenizer))
    anchor_tokens = sum(label != IGNORE for label in moved[1][ANCHOR_LABELS][1:])
    packed = pack_samples(moved, 512)
    assert len(packed) == 1
    (row,) = packed
    assert len(row[ANCHOR_LABELS]) == len(row["input_ids"]) == len(row["labels"])
    assert (
        sum(label != IGNORE for label in row[ANCHOR_LABELS]) == anchor_tokens
    )  # first label of each sample -100
    batch = PackedCollator(pad_to=64)(packed)
    assert batch[ANCHOR_LABELS].shape == batch["labels"].shape and batch[ANCHOR_LABELS].shape[1] % 64 == 0
    assert int((batch[ANCHOR_LABELS] != IGNORE).sum()) == anchor_tokens
    padded = PaddingCollator(0)(moved)
    assert padded[ANCHOR_LABELS].shape == padded["labels"].shape
    assert padded[ANCHOR_LABELS][1].tolist()[: len(moved[1][ANCHOR_LABELS])] == moved[1][ANCHOR_LABELS]
    # Without anchors the batches are what they were: no extra key.
    plain = [{k: v for k, v in row.items() if k != ANCHOR} for row in _rows(tiny_tokenizer)]
    assert ANCHOR_LABELS not in PaddingCollator(0)(plain) and ANCHOR_LABELS not in pack_samples(plain, 512)[0]


def test_make_identity_marks_its_general_conversations_only(tmp_path):
    out = tmp_path / "id.jsonl"
    make_identity(
        out,
        "Ada",
        general_source=lambda qs: [f"回答：{q}" if language_of(q) == "zh" else f"answer to {q}" for q in qs],
    )
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    marked = [r for r in records if r.get(ANCHOR)]
    assert len(marked) == 136 and len(records) == 272
    assert all(r["conversation"][0]["output"].startswith(("answer to ", "回答：")) for r in marked)
    assert not any("Ada" in r["conversation"][0]["output"] for r in marked)
    assert all("Ada" in r["conversation"][0]["output"] for r in records if not r.get(ANCHOR))
    samples = load_samples(out, "auto").samples
    assert sum(bool(s.get(ANCHOR)) for s in samples) == 136


def test_make_identity_adds_kl_probes_marked_kl(tmp_path):
    from tuner.data.identity import GeneralAnswer
    from tuner.data.probe_questions import PROBE_QUESTIONS

    asked = []

    def openings(questions):
        asked.extend(questions)
        # one opening comes back empty: that probe is skipped, not written blank
        return [GeneralAnswer("" if i == 0 else f"opening of {q}") for i, q in enumerate(questions)]

    out = tmp_path / "id.jsonl"
    result = make_identity(
        out,
        "Ada",
        general_source=lambda qs: [f"回答：{q}" if language_of(q) == "zh" else f"answer to {q}" for q in qs],
        kl_probes=5,
        probe_source=openings,
        general_anchors=False,
    )
    assert asked == PROBE_QUESTIONS["en"][:5] + PROBE_QUESTIONS["zh"][:5]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    probes = [r for r in records if r.get(ANCHOR) == KL_ONLY]
    assert result.probe_count == len(probes) == 9 and len(records) == result.total == 272 + 9
    assert {r["conversation"][0]["input"] for r in probes} == set(asked[1:])
    assert all(r["conversation"][0]["output"] == "opening of " + r["conversation"][0]["input"] for r in probes)
    # general_anchors=False: the general conversations are plain conversations, trained as text
    assert not any(r.get(ANCHOR) is True for r in records)
    assert "9 KL probes" in result.summary()
    samples = load_samples(out, "auto").samples
    assert sum(s.get(ANCHOR) == KL_ONLY for s in samples) == 9
