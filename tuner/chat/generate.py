"""Generation: the streaming plumbing of a chat answer, and ``greedy_answers``, tuner's one greedy path.

Streaming: sampling settings, the transformers GenerationConfig, and the streamer and stopping
criterion that connect ``model.generate`` (run in a worker thread) to the consuming thread;
``tuner.chat.session.ChatSession._generate`` drives these.

Greedy: ``greedy_answers`` answers a list of single-turn prompts (evaluation answers while training,
general answers for identity data, the merged-model check). It and the chat session stop at the same
tokens, ``tuner.chat.text.stop_token_ids``.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from tuner.core.errors import TunerError
from tuner.data.identity import GENERATION_SYSTEM, SHIPPED_ANSWERS, Answerer

log = logging.getLogger(__name__)

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


class TokenQueue:
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


def stopping_criterion(tokenizer, prompt_len: int, stops: list[str], cancel: threading.Event):
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


def _trim_unfinished(text: str) -> str:
    """Cut an answer that ran out of tokens back to its last finished sentence."""
    ends = [m.end() for m in re.finditer(r"[.!?。！？](?=\s|$)|[。！？]", text)]
    return text[: ends[-1]] if ends else text


def model_answerer(
    model_dir: str | Path | None = None, *, max_new_tokens: int = 256, batch_size: int = 8
) -> Answerer:
    """A callable that answers questions greedily with a local model (default: the embedded one),
    rendered with the model's own chat template under the neutral GENERATION_SYSTEM prompt."""

    def answer(questions: list[str]) -> list[str]:
        import torch
        from transformers import AutoModelForCausalLM

        from tuner.chat.text import resolve_chat_template
        from tuner.models.embedded import ensure_default_model
        from tuner.models.load import load_tokenizer, release

        folder = Path(model_dir) if model_dir else ensure_default_model()
        tokenizer = load_tokenizer(str(folder))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        try:
            answers = greedy_answers(
                model,
                tokenizer,
                resolve_chat_template(tokenizer),
                questions,
                system=GENERATION_SYSTEM,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
        finally:
            release(model)
        return [a.text if a.finished else _trim_unfinished(a.text) for a in answers]

    return answer


def embedded_answerer() -> Answerer:
    """The default general-answer source: the shipped answers of the embedded model, falling back to
    generating with it for any question the file lacks (e.g. after the question list changed)."""
    shipped: dict[str, str] = {}
    if SHIPPED_ANSWERS.is_file():
        shipped = json.loads(SHIPPED_ANSWERS.read_text(encoding="utf-8")).get("answers", {})

    def answer(questions: list[str]) -> list[str]:
        missing = [q for q in questions if not shipped.get(q)]
        generated = dict(zip(missing, model_answerer()(missing), strict=True)) if missing else {}
        return [shipped.get(q) or generated[q] for q in questions]

    return answer


@dataclass(frozen=True)
class Answer:
    """One greedy answer: the prompt it answers, its text (special tokens dropped, stripped), the
    stop token it ended on (None when it ran out of ``max_new_tokens``) and its length in tokens."""

    prompt: str
    text: str
    stop_id: int | None
    new_tokens: int

    @property
    def finished(self) -> bool:
        """Whether the answer ended on a stop token rather than at the token limit."""
        return self.stop_id is not None


def greedy_answers(
    model,
    tokenizer,
    template,
    prompts: list[str],
    *,
    system: str | None = None,
    max_new_tokens: int,
    batch_size: int = 1,
) -> list[Answer]:
    """Greedy answers to ``prompts``, each a fresh single-turn conversation rendered with
    ``template`` (after ``system`` when given). The one greedy path of tuner: evaluation answers
    while training, general answers for identity data, the merged-model check and the identity check.

    Generation stops at ``tuner.chat.text.stop_token_ids`` (the chat session stops at the same ids).
    Batches are left-padded with the tokenizer's pad token (tuner.models.load.load_tokenizer sets
    one) and masked, so an answer does not depend on ``batch_size``. The model is put in eval mode
    for the call and back in training mode afterwards when it was training.
    """
    import torch
    from transformers import GenerationConfig

    from tuner.chat.text import stop_token_ids
    from tuner.models.load import with_pad_token

    stops = stop_token_ids(tokenizer, template)
    pad_id = with_pad_token(tokenizer).pad_token_id
    # An explicit config, so that sampling settings saved with the model never leak into "greedy".
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad_id
    )
    head = [{"role": "system", "content": system}] if system else []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers = []
    try:
        for start in range(0, len(prompts), max(1, batch_size)):
            batch = prompts[start : start + max(1, batch_size)]
            encoded = [
                tokenizer(
                    template.render([*head, {"role": "user", "content": p}], add_generation_prompt=True),
                    add_special_tokens=False,
                )["input_ids"]
                for p in batch
            ]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
            for prompt, row in zip(batch, out[:, width:].tolist(), strict=True):
                # A row that stopped early is filled up with padding: cut it at its first stop token.
                end = next((i for i, token in enumerate(row) if token in stops), None)
                tokens = row if end is None else row[:end]
                text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
                answers.append(Answer(prompt, text, None if end is None else row[end], len(tokens)))
    finally:
        if was_training:
            model.train()
    return answers
