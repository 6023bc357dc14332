"""Generation plumbing for a chat answer: sampling settings, the transformers GenerationConfig, and
the streamer and stopping criterion that connect ``model.generate`` (run in a worker thread) to the
consuming thread.

``tuner.chat.ChatSession._generate`` drives these; ``GenerationSettings`` is re-exported by
``tuner.chat``, so ``from tuner.chat import GenerationSettings`` keeps working.
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
    """A callable that answers questions greedily with a local model (default: the embedded one)."""

    def answer(questions: list[str]) -> list[str]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tuner.models.embedded import ensure_default_model

        folder = Path(model_dir) if model_dir else ensure_default_model()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        model.eval()
        eos = model.generation_config.eos_token_id
        stop_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        answers = []
        for start in range(0, len(questions), batch_size):
            batch = questions[start : start + batch_size]
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "system", "content": GENERATION_SYSTEM}, {"role": "user", "content": q}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                for q in batch
            ]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                device
            )
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row in output[:, inputs["input_ids"].shape[1] :]:
                finished = bool(stop_ids & set(row.tolist()))
                text = tokenizer.decode(row, skip_special_tokens=True).strip()
                answers.append(text if finished else _trim_unfinished(text))
            log.info("answered %d of %d general questions", len(answers), len(questions))
        return answers

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


def answer_questions(model, tokenizer, template, questions, system, max_new_tokens) -> list[dict]:
    """Greedy answers to ``questions`` rendered with the training template (used while training)."""
    import torch

    eot_ids = {tokenizer.eos_token_id}
    eot = tokenizer.convert_tokens_to_ids(template.end_of_turn) if template.end_of_turn else None
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        eot_ids.add(eot)
    eot_ids.discard(None)
    was_training = model.training
    model.eval()
    answers = []
    device = next(model.parameters()).device
    try:
        for question in questions:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": question}
            ]
            prompt = template.render(messages, add_generation_prompt=True)
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(device)
            with torch.no_grad():
                out = model.generate(
                    **ids,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=sorted(eot_ids),
                    pad_token_id=tokenizer.pad_token_id,
                    use_cache=True,
                )
            text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            answers.append({"prompt": question, "answer": text.strip()})
    finally:
        if was_training:
            model.train()
    return answers
