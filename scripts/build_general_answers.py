"""Regenerate tuner/data/general_answers_smollm2.json: the embedded model's own greedy answers to the
built-in everyday questions that make-identity mixes into identity data.

Generating them takes minutes on a CPU, so they ship with tuner; make-identity uses this file when the
base model is the embedded default and generates answers only for other models.
Run: python scripts/build_general_answers.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.chat.generate import model_answerer
from tuner.core.io import write_text_atomic
from tuner.data.identity import GENERAL_QUESTIONS, GENERATION_SYSTEM
from tuner.models.embedded import GGUF_FILE

OUT = Path(__file__).resolve().parent.parent / "tuner" / "data" / "general_answers_smollm2.json"
MAX_NEW_TOKENS = 256


def main() -> None:
    questions = [q for lang in sorted(GENERAL_QUESTIONS) for q in GENERAL_QUESTIONS[lang]]
    answers = model_answerer(max_new_tokens=MAX_NEW_TOKENS)(questions)
    payload = {
        "model": GGUF_FILE,
        "system": GENERATION_SYSTEM,
        "max_new_tokens": MAX_NEW_TOKENS,
        "decoding": "greedy",
        "answers": dict(zip(questions, answers, strict=True)),
    }
    write_text_atomic(OUT, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(answers)} answers to {OUT}")


if __name__ == "__main__":
    main()
