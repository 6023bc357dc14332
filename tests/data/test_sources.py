"""Data sources beyond JSON files: parquet / Arrow files, save_to_disk folders and Hub data sets read
from the local datasets cache, all flowing into the same format readers (same samples, errors, labels)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.tiny import QA, write_data
from tuner.core.errors import DataError
from tuner.data.check import check_data
from tuner.data.formats import load_samples
from tuner.data.sources import parse_source, source_problem

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Red."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say nothing.", "input": "", "output": ""},  # a bad record: empty output
]


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def chat(user, answer):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def test_a_parquet_file_reads_as_its_rows_and_names_the_bad_row(workspace):
    write_parquet(workspace / "alpaca.parquet", ALPACA)
    result = load_samples("alpaca.parquet")
    assert result.format == "alpaca"
    assert [s["messages"] for s in result.samples] == [
        chat("Name a colour.", "Red."),
        chat("Add the numbers.\n\n2 and 3", "5"),
    ]
    assert result.samples[0]["source"] == {"path": str(workspace / "alpaca.parquet"), "row": 1}
    assert [str(p) for p in result.problems] == [
        f"{workspace / 'alpaca.parquet'}: row 3: output: empty 'output' (fill it in or delete the record)"
    ]


def test_columns_rename_a_tables_fields_for_the_reader_and_a_missing_one_is_named(workspace):
    rows = [{"Question": "Who are you?", "Answer": "Tuna.", "URL": "x"}]
    write_parquet(workspace / "qa.parquet", rows)
    result = load_samples("qa.parquet?columns=Question:instruction,Answer:output")
    assert [s["messages"] for s in result.samples] == [chat("Who are you?", "Tuna.")]
    with pytest.raises(
        DataError, match=r"row 1: columns: no column 'Answr' \(columns: Question, Answer, URL\)"
    ):
        load_samples("qa.parquet?columns=Answr:output")
    with pytest.raises(DataError, match="unknown data source option 'spilt'"):
        load_samples("qa.parquet?spilt=train")


def test_an_arrow_file_reads_like_the_parquet_file(workspace):
    import pyarrow as pa

    table = pa.Table.from_pylist(ALPACA[:2])
    with (
        pa.OSFile(str(workspace / "alpaca.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as writer,
    ):
        writer.write_table(table)
    assert [s["messages"] for s in load_samples("alpaca.arrow").samples] == [
        chat("Name a colour.", "Red."),
        chat("Add the numbers.\n\n2 and 3", "5"),
    ]


def test_parquet_gives_the_same_tokens_and_label_masks_as_the_jsonl_file(workspace, tiny_tokenizer):
    from datasets import Dataset

    jsonl = write_data(workspace / "qa.jsonl")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    Dataset.from_list(rows).to_parquet(str(workspace / "qa.parquet"))
    reports = [
        check_data(name, tokenizer=tiny_tokenizer, template="chatml", show=len(QA)).to_dict()
        for name in ("qa.jsonl", "qa.parquet")
    ]
    assert reports[1]["ok"] and reports[0]["counts"]["samples"] == len(QA)
    assert reports[1]["counts"] == reports[0]["counts"]
    assert [(s["input_ids"], s["labels"]) for s in reports[1]["shown"]] == [
        (s["input_ids"], s["labels"]) for s in reports[0]["shown"]
    ]


def test_a_save_to_disk_folder_reads_its_train_split_or_the_one_asked_for(workspace):
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {"train": Dataset.from_list(ALPACA[:1]), "test": Dataset.from_list(ALPACA[1:2])}
    ).save_to_disk(str(workspace / "medqa_ds"))
    Dataset.from_list(ALPACA[:2]).save_to_disk(str(workspace / "one_ds"))

    assert parse_source("medqa_ds").kind == "disk"
    assert [s["messages"] for s in load_samples("medqa_ds").samples] == [chat("Name a colour.", "Red.")]
    assert [s["messages"] for s in load_samples("medqa_ds?split=test").samples] == [
        chat("Add the numbers.\n\n2 and 3", "5")
    ]
    assert len(load_samples("one_ds").samples) == 2
    with pytest.raises(DataError, match=r"no split 'valid' \(splits: train, test\).*\?split=train"):
        load_samples("medqa_ds?split=valid")


def build_hub_cache(hf_home, repo_id: str, splits: dict[str, list[dict]]) -> None:
    """What an online ``load_dataset(repo_id)`` leaves in ``$HF_HOME/datasets``: the prepared Arrow
    files under ``<namespace>___<name>/default/0.0.0/<commit>/``, made here by the same builder."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.json.json import Json

    namespace, name = repo_id.split("/")
    files = {}
    for split, rows in splits.items():
        files[split] = [str(hf_home / f"{split}.jsonl")]
        (hf_home / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    builder = Json(
        cache_dir=str(hf_home / "build"),
        dataset_name=name,
        config_name="default",
        config_id="default",
        hash="0123456789abcdef",
        data_files=DataFilesDict.from_patterns(files),
    )
    builder.download_and_prepare()
    shutil.move(str(hf_home / "build" / name), str(hf_home / "datasets" / f"{namespace}___{name}"))


def test_a_hub_data_set_loads_offline_from_the_local_cache(workspace, tmp_path, monkeypatch):
    import datasets

    hf_home = tmp_path / "hf_home"
    (hf_home / "datasets").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hf_home / "datasets")
    build_hub_cache(hf_home, "tuner-test/tiny-alpaca", {"train": ALPACA[:2], "test": ALPACA[:1]})

    assert parse_source("tuner-test/tiny-alpaca").kind == "hub"
    assert source_problem("tuner-test/tiny-alpaca?split=test") is None
    result = load_samples("tuner-test/tiny-alpaca")
    assert [s["messages"] for s in result.samples] == [
        chat("Name a colour.", "Red."),
        chat("Add the numbers.\n\n2 and 3", "5"),
    ]
    assert result.samples[1]["source"] == {"path": "tuner-test/tiny-alpaca", "row": 2}
    sliced = load_samples("tuner-test/tiny-alpaca?split=train[1:]&columns=output:output")
    assert [s["messages"] for s in sliced.samples] == [chat("Add the numbers.\n\n2 and 3", "5")]
    with pytest.raises(
        DataError, match=r"tuner-test/other \(Hub data set\): not in the local datasets cache"
    ):
        load_samples("tuner-test/other")


def test_a_missing_local_file_is_never_taken_for_a_hub_id(workspace):
    assert parse_source("data/train.jsonl").kind == "file"
    assert source_problem("data/train.jsonl") == f"file not found: {workspace / 'data/train.jsonl'}"
    (workspace / "plain").mkdir()
    assert "is a folder but not a `datasets` folder" in source_problem("plain")
