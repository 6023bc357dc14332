"""The encode cache: datasets.map gives exactly encode_samples' rows and statistics, a second run of
the same inputs reads them back without encoding, and any input that matters misses the cache."""

from __future__ import annotations

import pytest

from tests.tiny import QA
from tuner.core.errors import DataError
from tuner.data import encode_cache
from tuner.data.encode import encode_samples
from tuner.data.encode_cache import encode_cached
from tuner.data.templates import get_template


def samples(pairs=QA, repeat=1):
    return [
        {
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "source": {"path": "qa.jsonl", "line": i + 1},
        }
        for i, (q, a) in enumerate(pairs * repeat)
    ]


@pytest.fixture
def counted(monkeypatch):
    """How many samples the cached path actually encoded."""
    calls = []
    real = encode_cache.encode_samples

    def counting(batch, *args, **kwargs):
        calls.extend(batch)
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(encode_cache, "encode_samples", counting)
    return calls


def test_cached_encoding_equals_the_plain_one_and_the_second_run_encodes_nothing(
    workspace, tiny_tokenizer, counted
):
    data = samples() + [{"text": "a plain pretraining document " * 6, "source": {"path": "t", "line": 9}}]
    template = get_template("chatml")
    expected_rows, expected = encode_samples(data, tiny_tokenizer, template, 24)
    assert expected.truncated > 0 and expected.chunked == 1  # the interesting statistics are exercised

    rows, stats, reused = encode_cached(data, tiny_tokenizer, template, 24)
    assert (rows, stats.as_dict(), stats.lengths, reused) == (
        expected_rows,
        expected.as_dict(),
        expected.lengths,
        False,
    )
    assert len(counted) == len(data)
    assert len(list((workspace / ".cache" / "encoded").glob("*.arrow"))) == 1

    counted.clear()
    rows, stats, reused = encode_cached(data, tiny_tokenizer, template, 24)
    assert (rows, stats.as_dict(), reused) == (expected_rows, expected.as_dict(), True)
    assert counted == []


def test_max_length_template_data_and_tokenizer_each_miss_the_cache(workspace, tiny_tokenizer):
    data = samples()
    chatml = get_template("chatml")
    base = encode_cache.encode_key(data, tiny_tokenizer, chatml, 64)
    assert encode_cache.encode_key(data, tiny_tokenizer, chatml, 64) == base
    other_tokenizer = tiny_tokenizer.__class__.from_pretrained(
        _saved(tiny_tokenizer, workspace), extra_special_tokens=["<|extra|>"]
    )
    changed = [
        encode_cache.encode_key(data, tiny_tokenizer, chatml, 65),
        encode_cache.encode_key(data, tiny_tokenizer, get_template("default"), 64),
        encode_cache.encode_key(data[:-1], tiny_tokenizer, chatml, 64),
        encode_cache.encode_key(samples(QA[:-1] + [(QA[-1][0], "Berlin.")]), tiny_tokenizer, chatml, 64),
        encode_cache.encode_key(data, other_tokenizer, chatml, 64),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def _saved(tokenizer, folder):
    path = folder / "tok"
    tokenizer.save_pretrained(path)
    return path


def test_several_processes_give_the_same_rows(workspace, tiny_tokenizer):
    data = samples(repeat=4)
    template = get_template("chatml")
    expected_rows, expected = encode_samples(data, tiny_tokenizer, template, 32)
    rows, stats, _ = encode_cached(data, tiny_tokenizer, template, 32, num_proc=2)
    assert rows == expected_rows and stats.as_dict() == expected.as_dict()


def test_a_sample_that_cannot_be_encoded_is_named_as_without_the_cache(workspace, tiny_tokenizer):
    data = samples()
    data[2] = {
        "messages": [{"role": "assistant", "content": "no question"}],
        "source": {"path": "qa.jsonl", "line": 3},
    }
    template = get_template("chatml")
    with pytest.raises(DataError) as plain:
        encode_samples(data, tiny_tokenizer, template, 64)
    with pytest.raises(DataError) as cached:
        encode_cached(data, tiny_tokenizer, template, 64)
    assert (
        str(cached.value) == str(plain.value) == "qa.jsonl:3: turn 1: expected a user message, got assistant"
    )


def test_only_the_newest_cache_files_are_kept(workspace, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(encode_cache, "KEEP", 2)
    template = get_template("chatml")
    for length in (30, 31, 32):
        encode_cached(samples(), tiny_tokenizer, template, length)
    kept = {p.name for p in (workspace / ".cache" / "encoded").glob("*.arrow")}
    assert kept == {
        f"{encode_cache.encode_key(samples(), tiny_tokenizer, template, n)}.arrow" for n in (31, 32)
    }
