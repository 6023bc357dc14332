"""Regenerate tuner/data/probe_answers_smollm2.json: the embedded model's greedy openings (the first
tuner.chat.generate.PROBE_NEW_TOKENS tokens of its answer) to the KL probe questions of tuner/data/probe_questions.py.

A probe trains only through the KL term to the base model (tuner.train.anchor): what it needs is a
prefix the base model would write, not a finished or even a good answer, so the openings are kept as
the model wrote them, loops and all (the KL term pulls the tuned model to the base's distribution
there, whatever it is). Generating them takes about two minutes on a CPU, so they ship with tuner; other
models answer once and are cached in the workspace (tuner.chat.generate.probe_answerer).
Run: python scripts/build_probe_answers.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.chat.generate import generate_probe_answers  # noqa: E402
from tuner.core.io import write_text_atomic  # noqa: E402
from tuner.data.identity import SHIPPED_PROBE_ANSWERS  # noqa: E402
from tuner.data.probe_questions import PROBE_QUESTIONS  # noqa: E402
from tuner.models.embedded import GGUF_FILE  # noqa: E402


def main() -> None:
    questions = [q for lang in sorted(PROBE_QUESTIONS) for q in PROBE_QUESTIONS[lang]]
    payload = {**generate_probe_answers("default", questions), "model": GGUF_FILE}
    write_text_atomic(SHIPPED_PROBE_ANSWERS, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(payload['answers'])} probe openings to {SHIPPED_PROBE_ANSWERS}")


if __name__ == "__main__":
    main()
