"""The held-out identity check: its questions are unseen in training, and its scores are exact."""

from __future__ import annotations

import re

from tuner.data import identity_questions
from tuner.data.identity_check import IDENTITY, KNOWLEDGE, LEAKAGE, check_prompts, score_check
from tuner.data.probe_questions import PROBE_QUESTIONS


def test_held_out_questions_are_never_trained_on():
    trained = {
        q
        for lang in identity_questions.LANGS
        for q in identity_questions.QUESTIONS[lang] + identity_questions.GENERAL_QUESTIONS[lang]
    }
    held_out = check_prompts()
    assert len(held_out) == len(set(held_out)) == 60
    assert set(held_out) & trained == set()
    for lang in ("en", "zh"):
        assert (len(IDENTITY[lang]), len(LEAKAGE[lang]), len(KNOWLEDGE[lang])) == (10, 10, 10)
        # An answer that echoes its question is not right by accident (SmolLM2 often echoes Chinese ones).
        assert [
            c.question for c in KNOWLEDGE[lang] if any(a.lower() in c.question.lower() for a in c.accept)
        ] == []


def test_probe_questions_stay_apart_from_the_check_and_the_identity_data():
    # The KL probes pull the tuned model towards the base on prompts the check never asks: a probe that
    # were a held-out question, or one of its templates, would tune on the check.
    built_in = {
        q
        for lang in identity_questions.LANGS
        for q in identity_questions.QUESTIONS[lang] + identity_questions.GENERAL_QUESTIONS[lang]
    }
    held_out = check_prompts()
    for lang in ("en", "zh"):
        probes = PROBE_QUESTIONS[lang]
        assert len(probes) == len(set(probes)) >= 150
        assert set(probes) & (built_in | set(held_out)) == set()
        assert [q for q in probes if any(h.rstrip("?？。.") in q for h in held_out)] == []
    # None of the check's knowledge templates (capitals, sums, units of time, bees, planets) nor a
    # question about the assistant itself
    banned_en = r"\b(capital|plus|legs?|bees?|honey|planet|Shakespeare|ocean|assistant|AI|ChatGPT|your name|who are you|yourself)\b"
    assert [q for q in PROBE_QUESTIONS["en"] if re.search(banned_en, q, re.IGNORECASE)] == []
    banned_zh = r"首都|\d\s*加|加\s*\d|蜜蜂|蜂蜜|地球|几个月|多少个小时|助手|人工智能|你是谁|你的名字|你自己"
    assert [q for q in PROBE_QUESTIONS["zh"] if re.search(banned_zh, q)] == []


def test_scores_count_names_leaks_and_lost_knowledge():
    base = {q: "I am SmolLM." for q in check_prompts()}
    base.update({c.question: c.accept[0] + "." for lang in ("en", "zh") for c in KNOWLEDGE[lang]})
    base[KNOWLEDGE["en"][0].question] = "I do not know."  # the base gets one wrong
    tuned = dict(base)
    for q in IDENTITY["en"] + IDENTITY["zh"][:8]:
        tuned[q] = "I am Ada, an AI assistant."
    tuned[LEAKAGE["zh"][0]] = "我叫ada，很高兴为你服务。"  # the name, in any case, is a leak
    tuned[KNOWLEDGE["en"][0].question] = "Tokyo."  # learned one the base had wrong: fine
    tuned[KNOWLEDGE["zh"][1].question] = "我不知道。"  # lost one the base had right
    result = score_check("Ada", base, tuned)
    assert result.totals == {"identity": 20, "leakage": 20, "knowledge": 20}
    assert vars(result.base) == {"identity": 0, "leaks": 0, "knowledge": 19}
    assert vars(result.tuned) == {"identity": 18, "leaks": 1, "knowledge": 19}
    assert result.lost == [KNOWLEDGE["zh"][1].question]
    assert not result.passed  # identity and leakage meet their targets; the lost answer fails it
    assert "knowledge 19/20 -> 19/20 answered right; lost: 一年有几个月？" in result.summary()
    tuned[KNOWLEDGE["zh"][1].question] = "一年有12个月。"
    assert score_check("Ada", base, tuned).passed
    tuned[LEAKAGE["en"][0]] = "Ada says: Everest."
    assert not score_check("Ada", base, tuned).passed  # 2/20 leaks is over the target
    assert len(result.rows) == 60 and result.rows[0]["set"] == "identity"
