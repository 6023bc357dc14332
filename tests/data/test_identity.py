"""make-identity: varied identity questions and answers, mixed with general conversations."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tuner.__main__ import main
from tuner.chat import generate
from tuner.core.errors import DataError
from tuner.data import identity
from tuner.data.formats import load_samples
from tuner.data.identity import make_identity


def fake_answers(questions):
    return [f"answer to {q}" for q in questions]


def read(path):
    return [json.loads(line)["conversation"][0] for line in path.read_text(encoding="utf-8").splitlines()]


def test_identity_set_is_varied_and_names_the_assistant(tmp_path):
    out = tmp_path / "id.jsonl"
    result = make_identity(out, "Ada", persona="Bob's assistant, built on SmolLM2", mix_general=0)
    turns = read(out)
    assert (result.identity_count, result.general_count) == (136, 0)
    assert len(turns) == 136
    questions = Counter(t["input"] for t in turns)
    answers = Counter(t["output"] for t in turns)
    assert len(questions) == 68  # 34 English and 34 Chinese questions, two answers each
    assert set(questions.values()) == {2}
    assert len(answers) == 16  # 8 wordings per language
    assert all("Ada" in a and "Bob's assistant, built on SmolLM2" in a for a in answers)
    assert len({(t["input"], t["output"]) for t in turns}) == 136  # no pair repeated
    assert "你是谁？" in questions and "Who are you?" in questions
    assert "我是Ada，Bob's assistant, built on SmolLM2。有什么可以帮你的吗？" in answers
    loaded = load_samples(out)
    assert (loaded.format, len(loaded.samples), loaded.problems) == ("conversation", 136, [])


def test_default_persona_per_language(tmp_path):
    out = tmp_path / "zh.jsonl"
    make_identity(out, "小助手", langs="zh", mix_general=0)
    answers = {t["output"] for t in read(out)}
    assert "我是小助手，一个人工智能助手。有什么可以帮你的吗？" in answers
    assert all("小助手" in a for a in answers)


def test_general_conversations_mixed_in(tmp_path):
    out = tmp_path / "mix.jsonl"
    seen = []

    def answerer(questions):
        seen.extend(questions)
        return [*fake_answers(questions[:-1]), "  "]  # an empty answer is left out, and counted

    result = make_identity(out, "Ada", mix_general=7, general_source=answerer)
    assert len(seen) == 7
    assert sum(q in identity.GENERAL_QUESTIONS["en"] for q in seen) == 4
    assert sum(q in identity.GENERAL_QUESTIONS["zh"] for q in seen) == 3
    assert (result.identity_count, result.general_count, result.general_skipped) == (136, 6, 1)
    turns = read(out)
    general = [t for t in turns if t["output"].startswith("answer to ")]
    assert [t["output"] for t in general] == [f"answer to {t['input']}" for t in general]
    assert len(general) == 6 and len(turns) == 142
    # Mixed through the file, not appended at the end.
    positions = [i for i, t in enumerate(turns) if t["output"].startswith("answer to ")]
    assert positions != list(range(136, 142))
    # The same seed gives the same file.
    again = tmp_path / "again.jsonl"
    make_identity(again, "Ada", mix_general=7, general_source=answerer)
    assert again.read_bytes() == out.read_bytes()


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="unsupported language"):
        make_identity(tmp_path / "x.jsonl", "Ada", langs="en,fr", mix_general=0)
    with pytest.raises(DataError, match="needs a name"):
        make_identity(tmp_path / "x.jsonl", "  ", mix_general=0)
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_make_identity(tmp_path, capsys):
    out = tmp_path / "id.jsonl"
    assert main(["make-identity", str(out), "--name", "Ada", "--lang", "en", "--mix-general", "0"]) == 0
    assert capsys.readouterr().out == f"wrote 68 conversations to {out}: 68 identity, 0 general\n"
    before = out.read_bytes()
    assert main(["make-identity", str(out), "--name", "Eve", "--mix-general", "0"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["make-identity", str(out), "--name", "Eve", "--lang", "xx", "--mix-general", "0"]) == 2
    assert capsys.readouterr().err == "error: unsupported language(s): xx (supported: en, zh)\n"


@pytest.mark.slow
def test_general_answers_from_the_embedded_model(default_model_dir, tmp_path):
    out = tmp_path / "id.jsonl"
    answerer = generate.model_answerer(default_model_dir, max_new_tokens=24)
    result = make_identity(out, "Ada", mix_general=2, general_source=answerer)
    assert result.general_count == 2
    general = [t for t in read(out) if "Ada" not in t["output"]]
    assert len(general) == 2
    assert all(t["output"].strip() for t in general)


def test_default_general_answers_are_shipped_so_no_model_is_loaded(tmp_path, monkeypatch):

    shipped = json.loads(identity.SHIPPED_ANSWERS.read_text(encoding="utf-8"))
    every_question = [q for lang in identity.GENERAL_QUESTIONS for q in identity.GENERAL_QUESTIONS[lang]]
    assert set(every_question) <= set(shipped["answers"])
    assert all(shipped["answers"][q].strip() for q in every_question)

    def no_model(*args, **kwargs):
        raise AssertionError("the embedded model must not be loaded when shipped answers cover the questions")

    monkeypatch.setattr(generate, "model_answerer", no_model)
    result = identity.make_identity(
        tmp_path / "id.jsonl", "Ada", mix_general=10, general_source=generate.embedded_answerer()
    )
    assert result.general_count == 10
    outputs = {json.loads(line)["conversation"][0]["output"] for line in (tmp_path / "id.jsonl").open()}
    assert len(outputs & set(shipped["answers"].values())) == 10
