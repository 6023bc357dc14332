"""split: reproducible train/test files; no record lost, duplicated or changed."""

from __future__ import annotations

import json

import pytest

from tuner.__main__ import main
from tuner.core.errors import DataError, OutputExistsError
from tuner.data.split import split_file


def make_jsonl(path, n):
    # Odd spacing and non-ASCII prove records are copied verbatim, not re-serialised.
    lines = [f'{{"id": {i},  "text": "é{i}"}}' for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_split_defaults_reproducible_and_complete(tmp_path):
    source = tmp_path / "data.jsonl"
    lines = make_jsonl(source, 10)
    result = split_file(source)
    train, test = tmp_path / "data-train.jsonl", tmp_path / "data-test.jsonl"
    assert (result.train_path, result.test_path) == (train, test)
    assert (result.train_count, result.test_count, result.total) == (7, 3, 10)
    train_lines = train.read_text(encoding="utf-8").splitlines()
    test_lines = test.read_text(encoding="utf-8").splitlines()
    assert sorted(train_lines + test_lines) == sorted(lines)
    assert not set(train_lines) & set(test_lines)
    # Original order is kept inside each part.
    assert train_lines == [line for line in lines if line in train_lines]
    first = (train.read_bytes(), test.read_bytes())
    split_file(source, force=True)
    assert (train.read_bytes(), test.read_bytes()) == first
    split_file(source, seed=1, force=True)
    assert (train.read_bytes(), test.read_bytes()) != first


def test_split_exact_assignment_for_seed_0(tmp_path):
    source = tmp_path / "d.jsonl"
    make_jsonl(source, 10)
    split_file(source)
    test_ids = [json.loads(line)["id"] for line in (tmp_path / "d-test.jsonl").read_text().splitlines()]
    assert test_ids == [1, 7, 8]  # pinned: a changed algorithm would re-split users' data


def test_split_json_array_and_custom_outputs(tmp_path):
    source = tmp_path / "a.json"
    source.write_text(
        json.dumps([{"n": i, "t": "中"} for i in range(5)], ensure_ascii=False), encoding="utf-8"
    )
    result = split_file(
        source, test_ratio=0.4, train_out=tmp_path / "tr.jsonl", test_out=tmp_path / "te.jsonl"
    )
    assert (result.train_count, result.test_count) == (3, 2)
    records = [json.loads(line) for name in ("tr.jsonl", "te.jsonl") for line in (tmp_path / name).open()]
    assert sorted(r["n"] for r in records) == [0, 1, 2, 3, 4]
    assert "中" in (tmp_path / "tr.jsonl").read_text(encoding="utf-8")


def test_split_keeps_at_least_one_record_each_side(tmp_path):
    source = tmp_path / "two.jsonl"
    make_jsonl(source, 2)
    result = split_file(source, test_ratio=0.05)
    assert (result.train_count, result.test_count) == (1, 1)


def test_split_refuses_bad_input(tmp_path):
    one = tmp_path / "one.jsonl"
    make_jsonl(one, 1)
    with pytest.raises(DataError, match="at least 2 records"):
        split_file(one)
    with pytest.raises(DataError, match="between 0 and 1"):
        split_file(one, test_ratio=1.5)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"a": 1}\n{"a": \n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        split_file(broken)
    assert info.value.line == 2
    assert not (tmp_path / "broken-train.jsonl").exists()


def test_cli_split_never_overwrites_without_force(tmp_path, capsys):
    source = tmp_path / "d.jsonl"
    make_jsonl(source, 4)
    test = tmp_path / "d-test.jsonl"
    test.write_text("precious\n", encoding="utf-8")
    assert main(["split", str(source)]) == 2
    assert (
        capsys.readouterr().err
        == f"error: {test}: file already exists; pass --force to overwrite it or choose another name\n"
    )
    # Neither part was written: the train file does not exist and the test file is untouched.
    assert not (tmp_path / "d-train.jsonl").exists()
    assert test.read_text(encoding="utf-8") == "precious\n"
    with pytest.raises(OutputExistsError):
        split_file(source)
    assert main(["split", str(source), "--force", "--test-ratio", "0.5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out == f"split 4 records: 2 -> {tmp_path / 'd-train.jsonl'}, 2 -> {test}\n"
