"""Regenerate tuner/data/general_answers_smollm2.json: the embedded model's own greedy answers to the
built-in everyday questions that make-identity mixes into identity data.

Generating them takes minutes on a CPU, so they ship with tuner; make-identity uses this file when the
base model is the embedded default (other models answer once and are cached in the workspace).
Answers unfit to train on (tuner.data.answer_quality) are not kept: the file lists them under
"rejected" with the reason.
Run: python scripts/build_general_answers.py           (every answer generated anew)
     python scripts/build_general_answers.py --clean   (filter the file again; generate only what it lacks)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner.chat.generate import generate_general_answers
from tuner.core.io import write_text_atomic
from tuner.data.identity import GENERAL_QUESTIONS, SHIPPED_ANSWERS
from tuner.models.embedded import GGUF_FILE


def main(argv: list[str]) -> None:
    from tuner.chat.generate import read_answers
    from tuner.data.answer_quality import answer_problem

    questions = [q for lang in sorted(GENERAL_QUESTIONS) for q in GENERAL_QUESTIONS[lang]]
    if "--clean" in argv:
        # Keep the file's answers that pass today's filter; answer only the questions it lacks.
        payload = read_answers(SHIPPED_ANSWERS)
        for question, answer in list(payload["answers"].items()):
            problem = answer_problem(question, answer)
            if problem or question not in questions:
                del payload["answers"][question]
                if problem and question in questions:
                    payload["rejected"][question] = problem
        missing = [q for q in questions if q not in payload["answers"] and q not in payload["rejected"]]
        if missing:
            fresh = generate_general_answers("default", missing)
            payload["answers"].update(fresh["answers"])
            payload["rejected"].update(fresh["rejected"])
    else:
        payload = generate_general_answers("default", questions)
        payload["model"] = GGUF_FILE
    write_text_atomic(SHIPPED_ANSWERS, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(payload['answers'])} usable answers to {SHIPPED_ANSWERS}; rejected {len(payload['rejected'])}:")
    for question, why in payload["rejected"].items():
        print(f"  {why}: {question}")


if __name__ == "__main__":
    main(sys.argv[1:])
