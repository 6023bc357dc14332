"""Regenerate tuner/data/general_answers_smollm2.json: the embedded model's own greedy answers to the
built-in everyday questions that make-identity mixes into identity data.

Generating them takes minutes on a CPU, so they ship with tuner; make-identity uses this file when the
base model is the embedded default (other models answer once and are cached in the workspace).
Answers unfit to train on (tuner.data.answer_quality) are not kept whole: when their own first
sentences (clauses in Chinese), up to where they loop, break or switch language, are fit
(``usable_start``), that start is kept and the question is listed under "salvaged" with the reason the
whole answer failed; otherwise the file lists the question under "rejected" with the reason.
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
from tuner.data.answer_quality import answer_problem, usable_start  # noqa: E402
from tuner.data.identity import GENERAL_QUESTIONS, GENERATION_SYSTEM, SHIPPED_ANSWERS  # noqa: E402
from tuner.models.embedded import GGUF_FILE  # noqa: E402
from tuner.models.load import load_model, load_tokenizer, release  # noqa: E402


def answer(questions: list[str], max_new_tokens: int) -> dict[str, tuple[str, str | None]]:
    """question -> (text to keep or "", None when kept whole, else the whole answer's problem)."""
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
    out = {}
    for a in raw:
        problem = answer_problem(a.prompt, a.text, finished=a.stop_id is not None)
        out[a.prompt] = (a.text, None) if not problem else (usable_start(a.prompt, a.text) or "", problem)
    return out


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
        payload.setdefault("salvaged", {})
        for question, text in list(payload["answers"].items()):
            if question in payload["salvaged"]:  # a kept start: cut it again by today's rules
                text = payload["answers"][question] = usable_start(question, text) or ""
                if not text:
                    del payload["answers"][question]
                    payload["rejected"][question] = payload["salvaged"].pop(question)
                    continue
            problem = answer_problem(question, text)
            if problem or question not in questions:
                del payload["answers"][question]
                payload["salvaged"].pop(question, None)
                if problem and question in questions:
                    payload["rejected"][question] = problem
        if args.salvage:
            payload["rejected"] = {}
        todo = [q for q in questions if q not in payload["answers"] and q not in payload["rejected"]]
    else:
        payload = {
            "model": GGUF_FILE,
            "system": GENERATION_SYSTEM,
            "decoding": "greedy",
            "answers": {},
            "rejected": {},
        }
        payload["salvaged"] = {}
        todo = questions
    if todo:
        for question, (text, problem) in answer(todo, args.max_new_tokens).items():
            if text:
                payload["answers"][question] = text
                if problem:
                    payload["salvaged"][question] = problem
            else:
                payload["rejected"][question] = problem
        payload.setdefault("runs", []).append({"questions": len(todo), "max_new_tokens": args.max_new_tokens})
    order = {q: i for i, q in enumerate(questions)}
    for key in ("answers", "rejected", "salvaged"):
        payload[key] = dict(sorted(payload.get(key, {}).items(), key=lambda kv: order.get(kv[0], len(order))))
    write_text_atomic(SHIPPED_ANSWERS, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    print(
        f"wrote {len(payload['answers'])} usable answers to {SHIPPED_ANSWERS} "
        f"({len(payload['salvaged'])} of them the usable start of an unfit answer); rejected {len(payload['rejected'])}:"
    )
    for question, why in payload["rejected"].items():
        print(f"  {why}: {question}")


if __name__ == "__main__":
    main(sys.argv[1:])
