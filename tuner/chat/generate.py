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

from tuner.chat.text import resolve_chat_template, stop_token_ids
from tuner.core.errors import TunerError
from tuner.core.io import write_text_atomic
from tuner.core.workspace import workspace_dir
from tuner.data.answer_quality import EMPTY, answer_problem
from tuner.data.identity import (
    GENERATION_SYSTEM,
    SHIPPED_ANSWERS,
    SHIPPED_PROBE_ANSWERS,
    Answerer,
    GeneralAnswer,
)
from tuner.models.load import load_model, load_tokenizer, release, with_pad_token

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


# Longest general answer generated for identity data: long enough for a few-paragraph answer to
# finish; an answer still going at this length is left out as unfinished.
GENERAL_MAX_NEW_TOKENS = 256
# Tokens of the base model's answer a KL probe keeps: the opening, where identity tuning moved the
# answers it should have left alone (docs/identity.md).
PROBE_NEW_TOKENS = 32


def answers_cache(model_name: str, kind: str = "general_answers") -> Path:
    """Where the answers of ``model_name`` are kept: one JSON file per model and ``kind``
    ("general_answers": whole answers to the general questions; "probe_answers": openings of answers
    to the KL probe questions) in the workspace.

    >>> answers_cache("Qwen/Qwen2.5-0.5B-Instruct").name
    'Qwen--Qwen2.5-0.5B-Instruct.json'
    """

    if model_name in ("", "default"):
        slug = "default"
    else:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "--", str(model_name).strip("/")).strip("-.") or "model"
    return workspace_dir() / "cache" / kind / f"{slug}.json"


def read_answers(path: Path) -> dict:
    """A general-answers file (the shipped one or a cache): {"answers": {q: text}, "rejected": {q: why}}."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"answers": {}, "rejected": {}}
    return {**payload, "answers": payload.get("answers", {}), "rejected": payload.get("rejected", {})}


def model_answers(
    model_name: str,
    questions: list[str],
    *,
    max_new_tokens: int,
    trust_remote_code: bool = False,
    batch_size: int = 8,
) -> list[Answer]:
    """``model_name``'s greedy answers to ``questions`` under the neutral GENERATION_SYSTEM prompt
    (on the GPU when there is one); the model is loaded for the call and released after it."""

    tokenizer = load_tokenizer(model_name, trust_remote_code=trust_remote_code)
    loaded = load_model(model_name, trust_remote_code=trust_remote_code)
    log.info("answering %d questions with %s (%s)", len(questions), model_name, loaded.device)
    try:
        return greedy_answers(
            loaded.model,
            tokenizer,
            resolve_chat_template(tokenizer),
            questions,
            system=GENERATION_SYSTEM,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
    finally:
        release(loaded.model)


def generate_general_answers(
    model_name: str, questions: list[str], *, trust_remote_code: bool = False, batch_size: int = 8
) -> dict:
    """The base model's own greedy answers to ``questions``, sorted into usable answers and rejected
    ones with the reason (tuner.data.answer_quality)."""

    answers = model_answers(
        model_name,
        questions,
        max_new_tokens=GENERAL_MAX_NEW_TOKENS,
        trust_remote_code=trust_remote_code,
        batch_size=batch_size,
    )
    usable, rejected = {}, {}
    for a in answers:
        problem = answer_problem(a.prompt, a.text, finished=a.finished)
        if problem:
            rejected[a.prompt] = problem
        else:
            usable[a.prompt] = a.text
    return {
        "model": str(model_name),
        "system": GENERATION_SYSTEM,
        "max_new_tokens": GENERAL_MAX_NEW_TOKENS,
        "decoding": "greedy",
        "answers": usable,
        "rejected": rejected,
    }


def generate_probe_answers(
    model_name: str, questions: list[str], *, trust_remote_code: bool = False, batch_size: int = 16
) -> dict:
    """The base model's greedy openings (PROBE_NEW_TOKENS tokens) to the KL probe ``questions``, kept
    as written: a probe needs a prefix the base model would write, not a good answer (the KL term
    pulls towards the base's distribution there, loops included). Only empty openings are refused."""

    answers = model_answers(
        model_name,
        questions,
        max_new_tokens=PROBE_NEW_TOKENS,
        trust_remote_code=trust_remote_code,
        batch_size=batch_size,
    )
    return {
        "model": str(model_name),
        "system": GENERATION_SYSTEM,
        "max_new_tokens": PROBE_NEW_TOKENS,
        "decoding": "greedy",
        "answers": {a.prompt: a.text for a in answers if a.text},
        "rejected": {a.prompt: EMPTY for a in answers if not a.text},
    }


def general_answerer(model_name: str = "default", *, trust_remote_code: bool = False) -> Answerer:
    """The general-answer source of make_identity: ``model_name``'s own answers (self-distillation).

    Answers come from the model's cache in the workspace (answers_cache); for the embedded model the
    answers shipped with tuner (tuner/data/general_answers_smollm2.json) seed it. Questions neither
    holds are answered by the model once, and the cache is updated (written atomically). Rejected
    answers come back as GeneralAnswer with the reason, so make_identity reports them.
    """
    return _cached_answerer(
        model_name, "general_answers", SHIPPED_ANSWERS, generate_general_answers, trust_remote_code
    )


def probe_answerer(model_name: str = "default", *, trust_remote_code: bool = False) -> Answerer:
    """The probe source of make_identity: ``model_name``'s greedy openings to the KL probe questions,
    cached as general_answerer caches (the embedded model's ship in
    tuner/data/probe_answers_smollm2.json)."""
    return _cached_answerer(
        model_name, "probe_answers", SHIPPED_PROBE_ANSWERS, generate_probe_answers, trust_remote_code
    )


def _cached_answerer(
    model_name: str, kind: str, shipped_file: Path, generate, trust_remote_code: bool
) -> Answerer:
    def answer(questions: list[str]) -> list[GeneralAnswer]:
        cache = answers_cache(model_name, kind)
        known = read_answers(cache)
        if model_name in ("", "default") and shipped_file.is_file():
            shipped = read_answers(shipped_file)
            known["answers"] = {**shipped["answers"], **known["answers"]}
            known["rejected"] = {**shipped["rejected"], **known["rejected"]}
        missing = [q for q in questions if q not in known["answers"] and q not in known["rejected"]]
        if missing:
            fresh = generate(model_name, missing, trust_remote_code=trust_remote_code)
            known["answers"].update(fresh["answers"])
            known["rejected"].update(fresh["rejected"])
            payload = {**fresh, "answers": known["answers"], "rejected": known["rejected"]}
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
        return [
            GeneralAnswer(known["answers"][q])
            if q in known["answers"]
            else GeneralAnswer("", known["rejected"][q])
            for q in questions
        ]

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
