"""Generation plumbing for a chat answer: sampling settings, the transformers GenerationConfig, and
the streamer and stopping criterion that connect ``model.generate`` (run in a worker thread) to the
consuming thread.

``tuner.chat.ChatSession._generate`` drives these; ``GenerationSettings`` is re-exported by
``tuner.chat``, so ``from tuner.chat import GenerationSettings`` keeps working.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, fields

from tuner.errors import TunerError

# Tokens decoded at the end of the sequence when checking for stop words; stop words are short
# (a few tokens), this leaves room for multi-token ones.
STOP_WINDOW_TOKENS = 32


# ------------------------------------------------------------------------------------- settings


@dataclass
class GenerationSettings:
    """Sampling controls. ``temperature`` 0 means greedy decoding (deterministic)."""

    max_new_tokens: int = 512  # tokens in one answer at most
    temperature: float = 0.7  # 0 = greedy; 0.1-1.0 typical
    top_p: float = 0.9  # nucleus sampling mass
    top_k: int = 50  # sample among the k most likely tokens; 0 = no limit
    repetition_penalty: float = 1.1  # >1 discourages repeating tokens; 1.0 = off
    seed: int | None = None  # fixed seed = reproducible sampling

    def problems(self) -> list[str]:
        out = []
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            out.append(f"temperature must be 0 (greedy) or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            out.append(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            out.append(f"top_k must be 0 (off) or more, not {self.top_k}")
        if self.repetition_penalty <= 0:
            out.append(f"repetition_penalty must be above 0, not {self.repetition_penalty}")
        return out

    def updated(self, **changes) -> GenerationSettings:
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TunerError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return GenerationSettings(**values)


def generation_config(settings: GenerationSettings, *, max_new_tokens: int, eos_ids, pad_id):
    """A transformers GenerationConfig for one answer."""
    from transformers import GenerationConfig

    kwargs = dict(
        max_new_tokens=max_new_tokens,
        eos_token_id=list(eos_ids),
        pad_token_id=pad_id,
        repetition_penalty=settings.repetition_penalty,
    )
    if settings.temperature > 0:
        kwargs.update(
            do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k
        )
    else:
        kwargs.update(do_sample=False)
    return GenerationConfig(**kwargs)


# ------------------------------------------------------------------------------ generation thread


class _TokenQueue:
    """A transformers streamer that hands new token ids to the consuming thread through a queue."""

    DONE = object()

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first pushes the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(self.DONE)


def _stopping_criterion(tokenizer, prompt_len: int, stops: list[str], cancel: threading.Event):
    """Stop when the tail of the generated text contains a stop word, or when cancelled."""
    import torch
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = []
            for row in input_ids:
                tail = row[prompt_len:][-STOP_WINDOW_TOKENS:]
                text = tokenizer.decode(tail, skip_special_tokens=False)
                done.append(cancel.is_set() or any(word in text for word in stops))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopOnText()
