"""Regenerate tuner/data/general_answers_smollm2.json: the embedded model's own greedy answers to the
built-in everyday questions that make-identity mixes into identity data.

Generating them takes minutes on a CPU, so they ship with tuner; make-identity uses this file when the
base model is the embedded default (other models answer once and are cached in the workspace).
Answers unfit to train on (tuner.data.answer_quality) are not kept whole: when their own first
sentences (clauses in Chinese), up to where they loop, break or switch language, are fit
(``usable_start``), that start is kept and the question is listed under "salvaged" with the reason the
whole answer failed. An answer (or start) in another language than its question (SmolLM2 answers about
half of the Chinese questions in English) is kept too and listed under "other_language": make_identity
uses those only with other_language=True. Otherwise the file lists the question under "rejected".
Run: python scripts/build_general_answers.py           (every answer generated anew)
     python scripts/build_general_answers.py --clean   (filter the file again; generate only what it lacks)
     python scripts/build_general_answers.py --clean --salvage   (also answer the rejected ones again,
                                                                 to keep their usable starts)
     --max-new-tokens N: tokens per new answer (default 256; a start needs fewer)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.chat.generate import GENERAL_MAX_NEW_TOKENS, greedy_answers, read_answers  # noqa: E402
from tuner.chat.text import resolve_chat_template  # noqa: E402
from tuner.core.io import write_text_atomic  # noqa: E402
from tuner.data.answer_quality import EMPTY, WRONG_LANGUAGE, answer_problem, usable_start  # noqa: E402
from tuner.data.identity import GENERATION_SYSTEM, SHIPPED_ANSWERS  # noqa: E402
from tuner.data.identity_questions import GENERAL_QUESTIONS  # noqa: E402
from tuner.models.embedded import GGUF_FILE  # noqa: E402
from tuner.models.load import load_model, load_tokenizer, release  # noqa: E402


def classify(question: str, text: str, finished: bool) -> tuple[str, str | None, bool, bool]:
    """(text to keep or "", the whole answer's problem or None, whether the kept text is in another
    language than the question, whether it is only the answer's start). Whole and in the question's
    language first; then its usable start; then the same in another language (the model's habit)."""
    problem = answer_problem(question, text, finished=finished)
    if not problem:
        return text, None, False, False
    start = usable_start(question, text)
    if start:
        return start, problem, False, True
    if not answer_problem(question, text, finished=finished, other_language_ok=True):
        return text, problem, True, False
    start = usable_start(question, text, other_language_ok=True) or ""
    return start, problem, True, True


def answer(questions: list[str], max_new_tokens: int) -> dict[str, tuple[str, str | None, bool]]:
    """question -> classify() of the embedded model's greedy answer."""
    tokenizer = load_tokenizer("default")
    loaded = load_model("default")
    try:
        raw = greedy_answers(
            loaded.model,
            tokenizer,
            resolve_chat_template(tokenizer),
            questions,
            system=GENERATION_SYSTEM,
            max_new_tokens=max_new_tokens,
            batch_size=8,
        )
    finally:
        release(loaded.model)
    return {a.prompt: classify(a.prompt, a.text, a.stop_id is not None) for a in raw}


def store(payload: dict, answers: dict[str, tuple[str, str | None, bool, bool]]) -> None:
    """Put classify() results into the file's "answers", "salvaged", "other_language" and "rejected"."""
    for question, (text, problem, other, cut) in answers.items():
        for key in ("answers", "salvaged", "other_language", "rejected"):
            payload[key].pop(question, None)
        if not text:
            payload["rejected"][question] = problem
            continue
        payload["answers"][question] = text
        if cut:
            payload["salvaged"][question] = problem
        if other:
            payload["other_language"][question] = WRONG_LANGUAGE


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clean", action="store_true", help="keep the file's fit answers; answer only what it lacks"
    )
    parser.add_argument(
        "--salvage", action="store_true", help="with --clean: answer the rejected questions again"
    )
    parser.add_argument("--max-new-tokens", type=int, default=GENERAL_MAX_NEW_TOKENS)
    args = parser.parse_args(argv)
    questions = [q for lang in sorted(GENERAL_QUESTIONS) for q in GENERAL_QUESTIONS[lang]]
    if args.clean:
        payload = read_answers(SHIPPED_ANSWERS)
        for key in ("salvaged", "other_language"):
            payload.setdefault(key, {})
        for question, text in list(payload["answers"].items()):
            other = question in payload["other_language"]
            if question in payload["salvaged"]:  # a kept start: cut it again by today's rules
                text = usable_start(question, text, other_language_ok=other) or ""
            problem = answer_problem(question, text, other_language_ok=other) if text else EMPTY
            if problem or question not in questions:
                for key in ("answers", "salvaged", "other_language"):
                    payload[key].pop(question, None)
                if question in questions:
                    payload["rejected"][question] = problem
            else:
                payload["answers"][question] = text
        if args.salvage:
            payload["rejected"] = {}
        todo = [q for q in questions if q not in payload["answers"] and q not in payload["rejected"]]
    else:
        payload = {"model": GGUF_FILE, "system": GENERATION_SYSTEM, "decoding": "greedy"}
        payload.update(answers={}, rejected={}, salvaged={}, other_language={})
        todo = questions
    if todo:
        store(payload, answer(todo, args.max_new_tokens))
        payload.setdefault("runs", []).append({"questions": len(todo), "max_new_tokens": args.max_new_tokens})
    order = {q: i for i, q in enumerate(questions)}
    for key in ("answers", "rejected", "salvaged", "other_language"):
        payload[key] = dict(sorted(payload.get(key, {}).items(), key=lambda kv: order.get(kv[0], len(order))))
    write_text_atomic(SHIPPED_ANSWERS, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    print(
        f"wrote {len(payload['answers'])} usable answers to {SHIPPED_ANSWERS} "
        f"({len(payload['salvaged'])} of them the usable start of an unfit answer, "
        f"{len(payload['other_language'])} in another language than the question); "
        f"rejected {len(payload['rejected'])}:"
    )
    for question, why in payload["rejected"].items():
        print(f"  {why}: {question}")


if __name__ == "__main__":
    main(sys.argv[1:])
