"""The app's way into the new data sources and task metrics: data_ref takes Hub ids and datasets
folders, and the Export tab's Evaluate scores the chosen adapter on a test file."""

from __future__ import annotations

import json

import pytest

from tests.tiny import make_run
from tuner.chat.generate import Answer
from tuner.core.errors import TunerError
from tuner.ui.common import data_ref


def test_data_ref_keeps_hub_ids_and_options_and_holds_files_to_the_workspace(workspace, tmp_path_factory):
    (workspace / "data").mkdir()
    (workspace / "data" / "qa.parquet").write_bytes(b"")
    assert data_ref("yahma/alpaca-cleaned?split=train[:10]") == "yahma/alpaca-cleaned?split=train[:10]"
    assert (
        data_ref("data/qa.parquet?columns=q:instruction")
        == f"{workspace / 'data/qa.parquet'}?columns=q:instruction"
    )
    outside = tmp_path_factory.mktemp("outside") / "x.jsonl"
    outside.write_text("{}\n")
    with pytest.raises(TunerError, match="outside the workspace"):
        data_ref(str(outside))
    with pytest.raises(TunerError, match="no such file or folder"):
        data_ref("data/missing.jsonl")


def test_the_export_tab_evaluates_the_chosen_adapter(workspace, tiny_llama_dir, monkeypatch):
    from tuner.ui.export_tab import run_evaluation

    run = make_run(workspace, tiny_llama_dir)
    (workspace / "test.jsonl").write_text(
        "".join(
            json.dumps({"conversation": [{"input": q, "output": a}]}) + "\n"
            for q, a in [("Capital of France?", "Paris."), ("Say hi", "Hi!")]
        )
    )
    # Answers scripted so the scores are known: the adapter answers the first one right.
    monkeypatch.setattr(
        "tuner.export.evaluate.greedy_answers",
        lambda model, tok, template, prompts, **kw: [
            Answer(p, "Paris." if "France" in p else "No", 1, 1) for p in prompts
        ],
    )
    status, table = run_evaluation(
        "work_dirs/identity/20250101-120000/adapter", "test.jsonl", ["exact"], 32, 4, False
    )
    assert status == (
        "✅ 2 test samples; answers in work_dirs/identity/20250101-120000/evaluation/test.samples.jsonl, "
        "scores in work_dirs/identity/20250101-120000/evaluation/test.json"
    )
    assert table.splitlines() == ["| | fine-tuned |", "|---|---|", "| exact match | 50.00 |"]
    assert json.loads((run / "evaluation" / "test.json").read_text())["scores"] == {
        "fine_tuned": {"exact_match": 50.0}
    }
