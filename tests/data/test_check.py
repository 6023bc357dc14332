"""check-data: every problem with its line, token lengths, and samples as training sees them."""

from __future__ import annotations

import json

import pytest

from tuner.cli.check import main
from tuner.data.check import check_data, length_summary, mark_supervised

GOOD = [
    {
        "conversation": [
            {"system": "You are a doctor.", "input": "Hi", "output": "Hello!"},
            {"input": "Dose?", "output": "One tablet."},
        ]
    },
    {"conversation": [{"input": "What is the capital of France?", "output": "Paris."}]},
]


def _write(path, records):
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)
    )
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_shows_ids_and_labels(tmp_path, tiny_llama_dir, tiny_tokenizer, capsys):
    data = _write(tmp_path / "d.jsonl", GOOD)
    code, out, _ = _run(capsys, data, "--model", tiny_llama_dir, "--json", "--show", "2")
    assert code == 0
    report = json.loads(out)  # exactly one JSON object
    assert report["ok"] and report["format"] == "conversation" and report["records"] == 2
    assert report["counts"]["chat"] == 2 and report["counts"]["assistant_turns"] == 3
    assert report["template"]["name"] == "tokenizer" and report["template"]["end_of_turn"] == "<|im_end|>"
    first, second = report["shown"]
    assert first["source"]["line"] == 1 and second["source"]["line"] == 2
    assert len(first["input_ids"]) == len(first["labels"])
    supervised = [i for i, label in zip(first["input_ids"], first["labels"], strict=True) if label != -100]
    assert tiny_tokenizer.decode(supervised) == "Hello!<|im_end|>One tablet.<|im_end|>"
    assert tiny_tokenizer.decode(first["input_ids"]).startswith("<|im_start|>system\nYou are a doctor.")
    assert "[[Paris.<|im_end|>]]" in second["marked"]
    assert report["lengths"]["max"] == len(first["input_ids"])
    assert report["encode"]["supervised_tokens"] == sum(
        label != -100 for s in report["shown"] for label in s["labels"]
    )


def test_problems_reported_with_lines_and_fields(tmp_path, tiny_llama_dir, capsys):
    data = _write(tmp_path / "d.jsonl", [GOOD[0], "not json", {"conversation": [{"input": "Hi"}]}, GOOD[1]])
    code, out, _ = _run(capsys, data, "--model", tiny_llama_dir, "--json")
    assert code == 1
    report = json.loads(out)
    assert not report["ok"]
    assert [(p["line"], p["field"]) for p in report["problems"]] == [(2, None), (3, "conversation[0].output")]
    assert all(p["path"] == str(data) for p in report["problems"])
    assert report["counts"]["samples"] == 2

    code, out, _ = _run(capsys, data, "--model", tiny_llama_dir)
    assert code == 1
    assert f"{data}:2:" in out and f"{data}:3: conversation[0].output" in out
    assert "2 problems" in out


def test_lengths_against_max_length_and_truncation(tmp_path, tiny_llama_dir, capsys):
    data = _write(tmp_path / "d.jsonl", GOOD)
    code, out, _ = _run(capsys, data, "--model", tiny_llama_dir, "--json", "--max-length", "20")
    report = json.loads(out)
    assert code == 0  # long samples are truncated, not errors; the user is told
    assert report["lengths"]["over_max_length"] == 2
    assert report["encode"]["truncated"] == 2
    assert all(len(s["input_ids"]) <= 20 for s in report["shown"])
    assert any("truncated" in w for w in report["warnings"])


def test_named_template_and_system(tmp_path, tiny_llama_dir, capsys):
    data = _write(tmp_path / "d.jsonl", GOOD[1:])
    code, out, _ = _run(
        capsys,
        data,
        "--model",
        tiny_llama_dir,
        "--template",
        "internlm_chat",
        "--system",
        "Be brief.",
        "--show",
        "1",
    )
    assert code == 0
    assert "template: internlm_chat" in out
    assert (
        "<|System|>:Be brief.\n<|User|>:What is the capital of France?<eoh>\n<|Bot|>:[[Paris.<eoa>]]\n" in out
    )


def test_pretraining_text(tmp_path, tiny_llama_dir, capsys):
    data = tmp_path / "book.txt"
    data.write_text("The capital of France is Paris.\n\nParis is a city in Europe.\n")
    code, out, _ = _run(capsys, data, "--model", tiny_llama_dir, "--json", "--max-length", "4")
    report = json.loads(out)
    assert code == 0 and report["format"] == "pretrain" and report["counts"]["pretrain"] == 2
    assert report["template"] is None
    shown = report["shown"][0]
    assert shown["labels"] == shown["input_ids"] and shown["chunks"] > 1


def test_cannot_check_exits_2_with_error(tmp_path, tiny_llama_dir, capsys):
    code, _, err = _run(capsys, tmp_path / "missing.jsonl", "--model", tiny_llama_dir)
    assert code == 2 and err.startswith("error:")
    data = _write(tmp_path / "d.jsonl", GOOD)
    code, _, err = _run(capsys, data, "--model", tiny_llama_dir, "--template", "nope")
    assert code == 2 and "unknown template" in err


def test_encoding_problems_are_located(tmp_path, tiny_tokenizer):
    """A template that cannot encode the data is reported per sample, with its line."""
    from tests.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = "{{ messages | length }}" + tokenizer.chat_template
    data = _write(tmp_path / "d.jsonl", GOOD)
    report = check_data(data, tokenizer=tokenizer)
    assert not report.ok
    assert [p.line for p in report.problems] == [1, 2]
    assert "not a prefix" in report.problems[0].message


def test_helpers(tiny_tokenizer):
    assert length_summary([5, 1, 3, 100], 50) == {
        "count": 4,
        "min": 1,
        "median": 4.0,
        "p95": 100,
        "max": 100,
        "over_max_length": 1,
    }
    ids = tiny_tokenizer("ab<|im_end|>c", add_special_tokens=False)["input_ids"]
    labels = [-100] * len(ids)
    labels[-2] = ids[-2]
    assert mark_supervised(ids, labels, tiny_tokenizer) == "ab[[<|im_end|>]]c"


@pytest.mark.slow
def test_default_model(tmp_path, default_model_dir, capsys, monkeypatch):
    data = _write(tmp_path / "d.jsonl", GOOD[1:])
    code, out, _ = _run(capsys, data, "--json", "--show", "1")
    report = json.loads(out)
    assert code == 0 and report["model"] == "default"
    assert (
        "You are a helpful AI assistant named SmolLM" in report["shown"][0]["marked"]
    )  # shown, never hidden


def test_verb_is_dispatched(tmp_path, tiny_llama_dir, capsys):
    from tuner.__main__ import main as tuner_main

    data = _write(tmp_path / "d.jsonl", GOOD)
    assert tuner_main(["check-data", str(data), "--model", str(tiny_llama_dir), "--json", "--show", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
