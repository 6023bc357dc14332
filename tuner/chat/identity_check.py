"""Run the held-out identity check (tuner.data.identity_check) on a tuned adapter, base vs tuned.

One model in memory: the base answers come from the same weights with the adapter switched off,
as in a chat comparison. Both sides answer greedily through tuner.chat.generate.greedy_answers, with
the system prompt and template the run trained with.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tuner.chat.generate import greedy_answers
from tuner.chat.session import ChatSession
from tuner.data.identity_check import CheckResult, check_prompts, score_check
from tuner.runs.adapters import locate_adapter

log = logging.getLogger(__name__)

# Long enough for a self-introduction or a one-sentence fact; the check reads only the start.
CHECK_MAX_NEW_TOKENS = 32


def check_identity(
    adapter: str | Path,
    name: str,
    *,
    langs=("en", "zh"),
    model_name: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> CheckResult:
    """Answer the held-out check with the adapter off (base) and on (tuned) and score both.

    ``adapter``: a run folder, a checkpoint or an adapter folder; ``model_name``: the base model
    (default: the one the run trained).
    """

    found = locate_adapter(Path(adapter))
    base_model = model_name or found.base_model or "default"
    session = ChatSession(base_model, adapter=found.adapter_dir, precision="auto")
    prompts = check_prompts(langs)
    try:

        def answers() -> dict[str, str]:
            out = greedy_answers(
                session.model,
                session.tokenizer,
                session.chat_template,
                prompts,
                system=session.system,
                max_new_tokens=max_new_tokens or CHECK_MAX_NEW_TOKENS,
                batch_size=batch_size,
            )
            return {a.prompt: a.text for a in out}

        with session.model.disable_adapter():
            base = answers()
        tuned = answers()
    finally:
        session.close()
    return score_check(name, base, tuned, langs)
