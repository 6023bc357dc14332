"""make-identity: varied identity questions and answers, mixed with general conversations."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tuner.__main__ import main
from tuner.chat import generate
from tuner.core.errors import DataError
from tuner.data import identity, identity_questions
from tuner.data.answer_quality import LOOP, UNFINISHED, WRONG_LANGUAGE, answer_problem, language_of
from tuner.data.formats import load_samples
from tuner.data.identity import GeneralAnswer, make_identity


def fake_answers(questions):
    """A finished answer in the question's language."""
    return [f"回答：{q}" if language_of(q) == "zh" else f"answer to {q}" for q in questions]


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


def test_every_wording_names_the_name_before_the_persona():
    """ "I am"/"我是" is always followed by the name: a wording such as "You can call me Ada. I am <persona>"
    taught the tuned model to answer "我是<persona>。" without the name."""
    for lang in identity_questions.LANGS:
        for template in identity_questions.ANSWERS[lang]:
            answer = template.format(name="NAME", persona="PERSONA")
            assert answer.index("NAME") < answer.index("PERSONA"), answer
            for opener in ("I am ", "I'm ", "我是", "我叫"):
                assert f"{opener}PERSONA" not in answer, answer


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
    every = identity_questions.GENERAL_QUESTIONS["en"] + identity_questions.GENERAL_QUESTIONS["zh"]
    assert seen == every  # every question is asked (and cached by the answerer), then drawn from
    assert (result.identity_count, result.general_count, result.general_skipped) == (136, 7, 1)
    assert result.rejected == {every[-1]: "empty"}
    n_en, n_zh = (
        len(identity_questions.GENERAL_QUESTIONS["en"]),
        len(identity_questions.GENERAL_QUESTIONS["zh"]),
    )
    assert result.per_lang == {"en": (68, 4, n_en), "zh": (68, 3, n_zh - 1)}
    turns = read(out)
    general = [t for t in turns if t["output"].startswith(("answer to ", "回答："))]
    assert [t["output"] for t in general] == fake_answers([t["input"] for t in general])
    assert len(general) == 7 and len(turns) == 143 and len({t["input"] for t in general}) == 7
    # Mixed through the file, not appended at the end.
    positions = [i for i, t in enumerate(turns) if t in general]
    assert positions != list(range(136, 143))
    # The same seed gives the same file.
    again = tmp_path / "again.jsonl"
    make_identity(again, "Ada", mix_general=7, general_source=answerer)
    assert again.read_bytes() == out.read_bytes()


def test_default_mix_balances_each_language_and_leaves_out_unfit_answers(tmp_path):
    """As many general conversations as identity ones in each language, whatever survives the filter."""
    zh = identity_questions.GENERAL_QUESTIONS["zh"]

    def answerer(questions):
        answers = fake_answers(questions)
        for i, q in enumerate(questions):
            if q == zh[0]:
                answers[i] = "中国是一个美丽的" + "美丽的" * 30
            elif q == zh[1]:
                answers[i] = "The capital of China is Beijing."
            elif q in zh[2:]:
                answers[i] = GeneralAnswer("", UNFINISHED)  # the generator saw it run out of tokens
        return answers

    out = tmp_path / "balanced.jsonl"
    result = make_identity(out, "Ada", general_source=answerer)
    assert result.rejected == {zh[0]: LOOP, zh[1]: WRONG_LANGUAGE, **{q: UNFINISHED for q in zh[2:]}}
    # Chinese has no usable answer left: nothing to repeat, and the summary warns about it.
    n_en = len(identity_questions.GENERAL_QUESTIONS["en"])
    assert result.per_lang == {"en": (68, 68, n_en), "zh": (68, 0, 0)}
    assert "no usable general answer in zh" in result.summary()
    assert f"{len(zh) - 2} {UNFINISHED}" in result.summary()
    turns = read(out)
    en_general = Counter(t["input"] for t in turns if t["output"].startswith("answer to "))
    # 68 conversations from 54 answers: each answer used once or twice, none left out.
    assert n_en == 54
    assert sum(en_general.values()) == 68 and set(en_general.values()) == {1, 2} and len(en_general) == n_en


def test_answer_filter_names_what_is_wrong():
    assert answer_problem("Why is the sky blue?", "Because of Rayleigh scattering.") is None
    assert answer_problem("Why is the sky blue?", "") == "empty"
    assert answer_problem("Why is the sky blue?", "Because", finished=False) == UNFINISHED
    assert (
        answer_problem(
            "Write a poem.", "Moon's light,\nA harvest,\nMoon's light,\nMoon's light,\nMoon's light."
        )
        == LOOP
    )
    assert (
        answer_problem("面试前应该怎么准备？", "".join(f"* {i}. 说明面试前应说：\n" for i in range(1, 11)))
        == LOOP
    )
    assert answer_problem("天空为什么是蓝色的？", "The color of the sky is blue.") == WRONG_LANGUAGE
    assert answer_problem("How are you?", "我很好，谢谢。") == WRONG_LANGUAGE
    assert answer_problem("下雨是怎么形成的？", "水蒸气遇冷凝结成小水滴，水滴变大后落下就是雨。") is None
    assert answer_problem("下雨是怎么形成的？", "水蒸气\ufffd") == "broken characters"


def test_usable_start_keeps_the_answers_own_words_up_to_the_loop():
    from tuner.data.answer_quality import usable_start

    loop = "狗是一个独特动物，它是一个独特动物，它是一个独特动物，它是一个独特动物，它是一个独"
    assert answer_problem("狗是什么动物？", loop) == LOOP
    assert usable_start("狗是什么动物？", loop) == "狗是一个独特动物。"
    # a start that only echoes the question, switches to English or breaks is not kept
    assert usable_start("水是什么颜色的？", "水是什么颜色？-\n\n水是什么颜色？-\n\n水是什么颜色？") is None
    assert usable_start("三角形有几条边？", "The answer is 3. The answer is 3.") is None
    assert usable_start("早上好！", "早上好！！！！！！！！�") is None
    # English: whole sentences only; an unfinished last sentence is dropped
    cut = usable_start(
        "Who painted the Mona Lisa?", "Leonardo da Vinci painted it. It hangs in the Louvre, which"
    )
    assert cut == "Leonardo da Vinci painted it."


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="unsupported language"):
        make_identity(tmp_path / "x.jsonl", "Ada", langs="en,fr", mix_general=0)
    with pytest.raises(DataError, match="needs a name"):
        make_identity(tmp_path / "x.jsonl", "  ", mix_general=0)
    assert not (tmp_path / "x.jsonl").exists()


def test_cli_make_identity(tmp_path, capsys):
    out = tmp_path / "id.jsonl"
    args = [
        "make-identity",
        str(out),
        "--name",
        "Ada",
        "--lang",
        "en",
        "--mix-general",
        "0",
        "--kl-probes",
        "0",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out == f"wrote 68 conversations to {out}: 68 identity, 0 general\n"
    before = out.read_bytes()
    assert main(["make-identity", str(out), "--name", "Eve", "--mix-general", "0"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["make-identity", str(out), "--name", "Eve", "--lang", "xx", "--mix-general", "0"]) == 2
    assert capsys.readouterr().err == "error: unsupported language(s): xx (supported: en, zh)\n"


def test_general_answers_come_from_the_model_and_are_cached(tiny_llama_dir, workspace, monkeypatch):
    """Self-distillation: the base model answers once; the answers are kept per model in the workspace."""
    monkeypatch.setattr(generate, "GENERAL_MAX_NEW_TOKENS", 6)
    questions = identity_questions.GENERAL_QUESTIONS["en"][:3]
    answers = generate.general_answerer(str(tiny_llama_dir))(questions)
    cache = generate.answers_cache(str(tiny_llama_dir))
    assert cache.is_file() and cache.parent == workspace / "cache" / "general_answers"
    saved = json.loads(cache.read_text(encoding="utf-8"))
    # A random tiny model answers in broken bytes and never ends: every answer is rejected, with why.
    assert saved["answers"] == {} and list(saved["rejected"]) == questions
    assert [a.problem for a in answers] == list(saved["rejected"].values())
    assert set(saved["rejected"].values()) <= {"broken characters", UNFINISHED}

    _forbid(monkeypatch, "generate_general_answers", "cached answers must not load the model again")
    assert generate.general_answerer(str(tiny_llama_dir))(questions) == answers


def test_shipped_answers_pass_the_filter_so_no_model_is_loaded(tmp_path, workspace, monkeypatch):
    shipped = json.loads(identity.SHIPPED_ANSWERS.read_text(encoding="utf-8"))
    every_question = [
        q for lang in identity_questions.GENERAL_QUESTIONS for q in identity_questions.GENERAL_QUESTIONS[lang]
    ]
    assert set(every_question) <= set(shipped["answers"]) | set(shipped["rejected"])
    other = shipped["other_language"]  # the model's own answers in another language than the question
    assert [
        q for q, a in shipped["answers"].items() if answer_problem(q, a, other_language_ok=q in other)
    ] == []
    assert {q for q, a in shipped["answers"].items() if answer_problem(q, a) == WRONG_LANGUAGE} == set(other)
    # the usable start of an unfit answer is the start of the model's own answer, cut where it went wrong
    assert set(shipped["salvaged"]) <= set(shipped["answers"])

    _forbid(
        monkeypatch,
        "generate_general_answers",
        "the embedded model must not be loaded when shipped answers cover the questions",
    )
    result = identity.make_identity(
        tmp_path / "id.jsonl", "Ada", general_source=generate.general_answerer("default")
    )
    left_out = {**shipped["rejected"], **{q: WRONG_LANGUAGE for q in other}}
    assert result.rejected == {q: left_out[q] for q in every_question if q in left_out}
    kept = identity.make_identity(
        tmp_path / "other.jsonl",
        "Ada",
        general_source=generate.general_answerer("default"),
        other_language=True,
    )
    assert kept.rejected == {q: shipped["rejected"][q] for q in every_question if q in shipped["rejected"]}
    outputs = {json.loads(line)["conversation"][0]["output"] for line in (tmp_path / "id.jsonl").open()}
    assert outputs & set(shipped["answers"].values()) == {
        shipped["answers"][q] for q in every_question if q in shipped["answers"] and q not in other
    }


def test_probe_openings_come_from_the_model_are_cut_short_and_cached(tiny_llama_dir, workspace, monkeypatch):
    """KL probes: the base model's greedy openings (PROBE_NEW_TOKENS tokens), kept as written, cached
    per model apart from the general answers."""
    from tuner.data.probe_questions import PROBE_QUESTIONS

    monkeypatch.setattr(generate, "PROBE_NEW_TOKENS", 4)
    questions = PROBE_QUESTIONS["en"][:3]
    openings = generate.probe_answerer(str(tiny_llama_dir))(questions)
    cache = generate.answers_cache(str(tiny_llama_dir), "probe_answers")
    assert cache.is_file() and cache.parent == workspace / "cache" / "probe_answers"
    saved = json.loads(cache.read_text(encoding="utf-8"))
    assert saved["max_new_tokens"] == 4
    # A random tiny model writes broken bytes: a general answer would be rejected, an opening is kept.
    assert [o.text for o in openings] == [saved["answers"][q] for q in questions] and all(
        o.text for o in openings
    )
    assert all(o.problem is None for o in openings)

    _forbid(monkeypatch, "generate_probe_answers", "cached openings must not load the model again")
    assert generate.probe_answerer(str(tiny_llama_dir))(questions) == openings


def test_shipped_probe_openings_cover_every_probe_question(tmp_path, workspace, monkeypatch):
    from tuner.data.probe_questions import PROBE_QUESTIONS

    shipped = json.loads(identity.SHIPPED_PROBE_ANSWERS.read_text(encoding="utf-8"))
    every_question = [q for lang in PROBE_QUESTIONS for q in PROBE_QUESTIONS[lang]]
    assert set(shipped["answers"]) | set(shipped["rejected"]) == set(every_question)
    assert shipped["max_new_tokens"] == generate.PROBE_NEW_TOKENS and shipped["decoding"] == "greedy"

    _forbid(
        monkeypatch,
        "generate_probe_answers",
        "the embedded model must not be loaded when shipped openings cover the probes",
    )
    result = identity.make_identity(
        tmp_path / "id.jsonl",
        "Ada",
        mix_general=0,
        kl_probes=160,
        probe_source=generate.probe_answerer("default"),
    )
    assert result.probe_count == len(shipped["answers"]) and result.identity_count == 136


def _forbid(monkeypatch, generator: str, why: str) -> None:
    """Make tuner.chat.generate's ``generator`` fail the test: the model must not be loaded."""

    def no_model(*args, **kwargs):
        raise AssertionError(why)

    monkeypatch.setattr(generate, generator, no_model)
