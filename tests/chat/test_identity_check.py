"""check-identity: the held-out check answers with the adapter off (base) and on (tuned) on one model."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from tests.tiny import make_run
from tuner.__main__ import main
from tuner.chat import identity_check
from tuner.chat.generate import greedy_answers
from tuner.chat.text import resolve_chat_template
from tuner.data.identity_check import check_prompts
from tuner.models.load import load_tokenizer


def test_cli_check_identity_compares_base_and_tuned(tmp_path, tiny_llama_dir, capsys, monkeypatch):
    monkeypatch.setattr(identity_check, "CHECK_MAX_NEW_TOKENS", 8)  # short answers: a fast test
    run = make_run(tmp_path, tiny_llama_dir, std=0.5)
    code = main(["check-identity", str(run), "--name", "Tuna", "--lang", "en", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # a random tiny model never says "Tuna": the identity target is missed
    assert report["totals"] == {"identity": 10, "leakage": 10, "knowledge": 10}
    assert report["tuned"]["identity"] == 0 and report["passed"] is False
    rows = report["rows"]
    assert [r["question"] for r in rows] == check_prompts(("en",))
    # "base" is the bare base model's greedy answer: the adapter really was off.
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32)
    expected = greedy_answers(base, tokenizer, resolve_chat_template(tokenizer), check_prompts(("en",))[:3],
                              max_new_tokens=8)
    assert [r["base"] for r in rows[:3]] == [a.text for a in expected]
    assert [r["tuned"] for r in rows] != [r["base"] for r in rows]  # and on for "tuned"
