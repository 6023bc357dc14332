"""Task metrics: the scores on a tiny split checked by hand, and the evaluate workflow (run folder in,
base vs fine-tuned answers, results JSON + per-sample JSONL out)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.tiny import make_run
from tuner.chat.generate import Answer
from tuner.core.errors import DataError, TunerError
from tuner.export.evaluate import evaluate
from tuner.export.metrics import CharTokenizer, parse_metrics, score

# A tiny test split: one exact answer, one longer answer, one Chinese answer missing a character.
ANSWERS = ["The capital of France is Paris.", "It is Paris", "我是助手"]
REFERENCES = ["the capital of  France is Paris.", "Paris", "我是小助手"]


def test_scores_on_a_tiny_split_match_the_hand_computed_values():
    corpus, per_sample = score(ANSWERS, REFERENCES, ["exact", "rouge", "bleu"])
    # exact match after case folding and whitespace collapsing: only the first.
    assert [s["exact_match"] for s in per_sample] == [100.0, 0.0, 0.0]
    # ROUGE-L F1 = 2PR/(P+R): identical -> 1; "it is paris" vs "paris": LCS 1, P 1/3, R 1 -> 0.5;
    # 我是助手 vs 我是小助手 per character: LCS 4, P 4/4, R 4/5 -> 8/9.
    assert [s["rougeL"] for s in per_sample] == pytest.approx([100.0, 50.0, 800 / 9])
    assert corpus["exact_match"] == pytest.approx(100 / 3)
    assert corpus["rougeL"] == pytest.approx((100 + 50 + 800 / 9) / 3)
    # Corpus BLEU, Chinese per character (sacrebleu's zh tokenizer; other text split as 13a), case
    # kept: sentence 1 is 7 tokens of which "The" vs "the" misses once in each n-gram order; sentence
    # 2 matches only "Paris"; sentence 3 matches 我 是 助 手 and the bigrams 我是, 助手. Clipped
    # precisions 1: (6+1+4)/14, 2: (5+0+2)/11, 3: (4+0+0)/8, 4: (3+0+0)/5; 14 answer tokens >= 13
    # reference tokens: no brevity penalty. BLEU = 100 * geometric mean.
    assert corpus["bleu"] == pytest.approx(100 * ((11 / 14) * (7 / 11) * (4 / 8) * (3 / 5)) ** 0.25)


def test_chinese_is_compared_per_character_and_other_words_whole():
    assert CharTokenizer().tokenize("我是 Tuna 的助手。") == ["我", "是", "tuna", "的", "助", "手"]
    # rouge-score's own tokenizer would drop the Chinese and the Cyrillic and score both 0.
    corpus, _ = score(["我是助手", "Это Париж"], ["我是小助手", "Париж"], ["rouge"])
    assert corpus["rougeL"] == pytest.approx((800 / 9 + 2 / 3 * 100) / 2)
    # For ASCII text the tokens are rouge-score's own.
    from rouge_score import tokenize

    text = "It's 2 o'clock, Dr. Smith-Jones!"
    assert CharTokenizer().tokenize(text) == tokenize.tokenize(text, None)


def test_metric_names_are_checked():
    assert parse_metrics("rouge, exact,rouge") == ["rouge", "exact"]
    with pytest.raises(ValueError, match="unknown metric meteor; choose from exact, rouge, bleu"):
        parse_metrics("exact,meteor")


def write_test(path, pairs, system=None):
    with open(path, "w", encoding="utf-8") as handle:
        for question, answer in pairs:
            turn = {"input": question, "output": answer, **({"system": system} if system else {})}
            handle.write(json.dumps({"conversation": [turn]}, ensure_ascii=False) + "\n")
    return path


def test_evaluate_writes_base_and_fine_tuned_scores_and_every_answer(workspace, tiny_llama_dir, monkeypatch):
    run = make_run(workspace, tiny_llama_dir)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "system": "You are Tuna."}))
    pairs = list(zip(["Q one?", "Question two, longer?", "三?"], REFERENCES, strict=True))
    test = write_test(workspace / "test.jsonl", pairs)

    # Scripted answers (the model's are checked in the next test): the fine-tuned model answers
    # ANSWERS, the base model one wrong word; each call records what it was asked.
    asked = []

    def scripted(model, tokenizer, template, prompts, *, system=None, max_new_tokens, batch_size=1):
        base = _adapter_off(model)
        asked.append((base, system, list(prompts), batch_size, max_new_tokens))
        by_prompt = dict(zip([q for q, _ in pairs], ANSWERS, strict=True))
        return [Answer(p, "wrong" if base else by_prompt[p], 7, 1) for p in prompts]

    monkeypatch.setattr("tuner.export.evaluate.greedy_answers", scripted)
    result = evaluate(str(run), str(test), max_new_tokens=16, batch_size=2)

    # Asked with the run's system prompt, longest prompts first, two at a time; base first.
    assert [(b, s, p, n) for b, s, p, n, _ in asked] == [
        (True, "You are Tuna.", ["Question two, longer?", "Q one?"], 2),
        (True, "You are Tuna.", ["三?"], 2),
        (False, "You are Tuna.", ["Question two, longer?", "Q one?"], 2),
        (False, "You are Tuna.", ["三?"], 2),
    ]
    assert result.results_path == run / "evaluation" / "test.json"
    saved = json.loads(result.results_path.read_text())
    assert (
        saved["samples"] == 3
        and saved["system"] == "You are Tuna."
        and saved["adapter"] == str(run / "adapter")
    )
    hand = score(ANSWERS, REFERENCES, ["exact", "rouge", "bleu"])[0]
    assert saved["scores"]["fine_tuned"] == pytest.approx(hand)
    assert saved["scores"]["base"] == {"exact_match": 0.0, "rougeL": 0.0, "bleu": pytest.approx(0.0)}
    rows = [json.loads(line) for line in result.samples_path.read_text().splitlines()]
    assert [(r["prompt"], r["reference"], r["base"], r["fine_tuned"]) for r in rows] == [
        (q, a, "wrong", answer) for (q, a), answer in zip(pairs, ANSWERS, strict=True)
    ]
    assert rows[0]["source"] == {"path": str(test), "line": 1}
    assert {k: rows[1]["fine_tuned_scores"][k] for k in ("exact_match", "rougeL")} == {
        "exact_match": 0.0,
        "rougeL": 50.0,
    }
    table = result.table().splitlines()
    assert table[0].split() == ["base", "fine-tuned"]
    assert table[1].split() == ["exact", "match", "0.00", "33.33"]


def _adapter_off(model) -> bool:
    """Whether a peft model answers as its base right now (inside disable_adapter())."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return all(layer.disable_adapters for layer in layers)


def test_the_real_model_answers_alike_in_any_batch_size_and_the_adapter_changes_them(
    workspace, tiny_llama_dir
):
    run = make_run(workspace, tiny_llama_dir, std=0.5)
    test = write_test(
        workspace / "test.jsonl", [("Who are you?", "Tuna."), ("Hi", "Hello"), ("Say it", "It")]
    )
    one = evaluate(str(run), str(test), max_new_tokens=6, batch_size=1, out_dir=workspace / "one")
    three = evaluate(str(run), str(test), max_new_tokens=6, batch_size=3, out_dir=workspace / "three")
    rows = [[json.loads(line) for line in r.samples_path.read_text().splitlines()] for r in (one, three)]
    assert [(r["base"], r["fine_tuned"]) for r in rows[0]] == [(r["base"], r["fine_tuned"]) for r in rows[1]]
    assert [r["base"] for r in rows[0]] != [r["fine_tuned"] for r in rows[0]]
    assert one.scores == three.scores


def test_evaluate_refuses_what_it_cannot_score(workspace, tiny_llama_dir):
    run = make_run(workspace, tiny_llama_dir)
    (workspace / "text.jsonl").write_text('{"text": "a document"}\n')
    with pytest.raises(DataError, match="pretraining text has no questions and answers to score"):
        evaluate(str(run), "text.jsonl")
    write_test(workspace / "test.jsonl", [("Q", "A")])
    with pytest.raises(TunerError, match="is a run or adapter already; drop --adapter"):
        evaluate(str(run), "test.jsonl", adapter=str(run / "adapter"))
