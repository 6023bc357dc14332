"""Chat with a model: streaming generation, multi-turn history, stop words, base-vs-tuned comparison.

One :class:`ChatSession` holds one model in memory. With an adapter the model is a ``PeftModel``
and the base model's answer comes from the same weights with the adapter switched off
(``disable_adapter()``), so a side-by-side comparison costs no second copy of the model.

Streaming contract (used by the CLI and the app):

* ``session.stream(text)`` yields **deltas**: each item is the new text since the previous item,
  so printing them in order prints the answer. ``session.stream(text, cumulative=True)`` yields the
  **whole answer so far** instead (what a chat widget re-renders). Stop words never appear in
  either; text that might be the start of a stop word is held back until it is clear that it is not.
* When the generator finishes (or is closed early, e.g. a Stop button), the answer so far is added
  to the history.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

from tuner.errors import ModelError, TunerError

log = logging.getLogger(__name__)

# Tokens decoded at the end of the sequence when checking for stop words; stop words are short
# (a few tokens), this leaves room for multi-token ones.
STOP_WINDOW_TOKENS = 32
# Files that mark a folder as holding a saved tokenizer (an exported adapter or a run's adapter/).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


# ------------------------------------------------------------------------------------ templates


def resolve_chat_template(tokenizer, name: str | None = None):
    """The ChatTemplate for ``tokenizer``: a named one, else the tokenizer's own (tuner.data.templates)."""
    from tuner.data.templates import resolve_template

    return resolve_template(tokenizer, name)


def single_token_id(tokenizer, text: str | None) -> int | None:
    """The id of ``text`` when the tokenizer has it as one token (e.g. ``<|im_end|>``), else None."""
    if not text:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return ids[0]
    return None


def stop_token_ids(tokenizer, template) -> list[int]:
    """Token ids generation must stop at: the tokenizer's eos, the template's end-of-turn token and
    every stop word that is a single token."""
    ids = []
    candidates = [tokenizer.eos_token, template.end_of_turn, *(template.stop_words or [])]
    for text in candidates:
        token_id = single_token_id(tokenizer, text)
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    return ids


def stop_strings(tokenizer, template, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every string at which an answer ends (the end-of-turn marker, stop words, eos text)."""
    words = [template.end_of_turn, *(template.stop_words or []), tokenizer.eos_token, *extra]
    out = []
    for word in words:
        if word and word not in out:
            out.append(word)
    return out


# --------------------------------------------------------------------------------- text filtering


def visible_text(
    text: str, stops: list[str], special: list[str] = (), *, final: bool = False
) -> tuple[str, bool]:
    """The part of generated ``text`` a user may see, and whether a stop word was reached.

    Text from the first stop word on is dropped. While generation goes on (``final=False``) a tail
    that could still grow into a stop word, or an incomplete UTF-8 character, is held back.

    Example:
        >>> visible_text("Paris.<|im_end|>\\nmore", ["<|im_end|>"])
        ('Paris.', True)
        >>> visible_text("Paris. <|im", ["<|im_end|>"])
        ('Paris.', False)
    """
    cut, stopped = len(text), False
    for word in stops:
        at = text.find(word)
        if at != -1 and at < cut:
            cut, stopped = at, True
    shown = text[:cut]
    for token in special:  # other special tokens (e.g. a stray <|im_start|>) are not text
        if token:
            shown = shown.replace(token, "")
    if not stopped and not final:
        hold = 0
        for word in stops:
            for size in range(min(len(word) - 1, len(shown)), 0, -1):
                if shown.endswith(word[:size]):
                    hold = max(hold, size)
                    break
        shown = shown[: len(shown) - hold]
        # Half of a multi-byte character, and trailing whitespace that the final answer strips:
        # held back so that the deltas always add up to the final answer.
        shown = shown.rstrip("\ufffd")
    return shown.strip(), stopped


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


# --------------------------------------------------------------------------------------- session


@dataclass
class ChatTurn:
    user: str
    assistant: str


@dataclass
class ChatSession:
    """A conversation with a model (and optionally a LoRA adapter, kept separate from the base).

    Args:
        model_name: local folder, hub id or ``default``.
        adapter: a LoRA adapter folder (a run's ``adapter/``, a checkpoint or an exported adapter).
        bits: 4 or 8 to load the base quantized (CUDA only), None for full precision.
        precision: auto, bf16, fp16 or fp32 (see tuner.model.resolve_dtype).
        template: a named chat template; None = the adapter's saved template, else the tokenizer's.
        system: system prompt kept at the start of every conversation.
        settings: generation controls; keyword arguments of the same names override them.
        context_window: tokens the model may see (prompt + answer); None = from the model config.
        model, tokenizer: already loaded objects to use instead of loading ``model_name``.

    Example:
        >>> session = ChatSession("default", adapter="work_dirs/x/20250101-000000/adapter")  # doctest: +SKIP
        >>> for delta in session.stream("Who are you?"):  # doctest: +SKIP
        ...     print(delta, end="", flush=True)
        >>> base, tuned = session.compare("Who are you?")  # doctest: +SKIP
    """

    model_name: str = "default"
    adapter: str | Path | None = None
    bits: int | None = None
    precision: str = "auto"
    template: str | None = None
    system: str | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    context_window: int | None = None
    trust_remote_code: bool = False
    device: str | None = None
    model: object = None
    tokenizer: object = None
    history: list[ChatTurn] = field(default_factory=list)
    # How the last answer ended: "stop" (end-of-turn / stop word / eos), "length" (max_new_tokens
    # reached) or "cancelled" (the consumer closed the stream); and its token counts.
    last_finish: str | None = None
    last_usage: dict = field(default_factory=dict)

    def __post_init__(self):
        problems = self.settings.problems()
        if problems:
            raise TunerError("; ".join(problems))
        self._lock = threading.Lock()
        adapter_dir = Path(self.adapter) if self.adapter else None
        if adapter_dir is not None:
            adapter_dir = _adapter_folder(adapter_dir)
            self.adapter = adapter_dir
        if self.tokenizer is None:
            self.tokenizer = _load_tokenizer(self.model_name, adapter_dir, self.trust_remote_code)
        if self.model is None:
            from tuner.model import load_adapter, load_model

            loaded = load_model(
                self.model_name,
                bits=self.bits,
                precision=self.precision,
                trust_remote_code=self.trust_remote_code,
                device=self.device,
            )
            self.model = loaded.model
            if adapter_dir is not None:
                self.model = load_adapter(self.model, adapter_dir)
        self.model.eval()
        self.chat_template = resolve_chat_template(
            self.tokenizer, self.template or _saved_setting(adapter_dir, "template")
        )
        if self.system is None:
            # Answer with the system prompt the adapter was trained with, or its identity is lost.
            self.system = _saved_setting(adapter_dir, "system")
        self.eos_ids = stop_token_ids(self.tokenizer, self.chat_template)
        self.stops = stop_strings(self.tokenizer, self.chat_template)
        if self.context_window is None:
            self.context_window = _context_window(self.model, self.tokenizer)

    # ------------------------------------------------------------------ public API

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()

    def stream(
        self, text: str, *, cumulative: bool = False, use_adapter: bool = True, **settings
    ) -> Iterator[str]:
        """Answer ``text`` as the next turn of the conversation, streaming.

        Yields deltas (new text since the last item), or with ``cumulative=True`` the whole answer so
        far. The finished (or interrupted) answer is appended to the history. ``settings`` override
        the session's generation settings for this answer (e.g. ``temperature=0``).
        """
        messages = self._conversation(text, self._settings(settings).max_new_tokens)
        answer = ""
        try:
            for answer, delta in self._generate(messages, self._settings(settings), use_adapter=use_adapter):
                yield answer if cumulative else delta
        except GeneratorExit:  # the consumer stopped early: keep what the user saw
            self.history.append(ChatTurn(text, answer))
            raise
        self.history.append(ChatTurn(text, answer))

    def answer(self, text: str, **settings) -> str:
        """The whole answer to ``text`` as the next turn of the conversation."""
        return _last(self.stream(text, cumulative=True, **settings), "")

    def answer_single(self, text: str, *, use_adapter: bool = True, **settings) -> str:
        """The whole answer to ``text`` as a fresh question (history neither used nor changed)."""
        return _last(self.stream_single(text, use_adapter=use_adapter, cumulative=True, **settings), "")

    def compare(self, text: str, **settings) -> tuple[str, str]:
        """(base answer, fine-tuned answer) to ``text`` as a fresh question (history not used nor changed).

        Both answers use the same seed, so with sampling the only difference is the adapter.
        """
        return _last(self.stream_compare(text, **settings), ("", ""))

    def stream_compare(self, text: str, **settings) -> Iterator[tuple[str, str]]:
        """Yield (base so far, fine-tuned so far): first the base answer grows, then the tuned one."""
        opts = self.compare_settings(**settings)
        base = ""
        for base in self.stream_single(text, use_adapter=False, cumulative=True, **opts):
            yield base, ""
        for tuned in self.stream_single(text, use_adapter=True, cumulative=True, **opts):
            yield base, tuned

    def compare_settings(self, **settings) -> dict:
        """Settings for a fair comparison: a seed fixed when none is given, so both sides sample alike."""
        if not self.has_adapter:
            raise TunerError("comparing needs an adapter: give --adapter (a run's adapter/ folder)")
        opts = self._settings(settings)
        return {**settings, "seed": 0 if opts.seed is None else opts.seed}

    def stream_single(
        self, text: str, *, use_adapter: bool = True, cumulative: bool = False, **settings
    ) -> Iterator[str]:
        """Answer ``text`` as a fresh question (system prompt + text; history neither used nor changed).

        Yields deltas, or the whole answer so far with ``cumulative=True``. ``use_adapter=False``
        answers with the base model (the adapter switched off for this answer only).
        """
        if not use_adapter and not self.has_adapter:
            raise TunerError("there is no adapter to switch off; give --adapter")
        for answer, delta in self._generate(
            self._fresh(text), self._settings(settings), use_adapter=use_adapter
        ):
            yield answer if cumulative else delta

    def complete(
        self,
        messages: list[dict],
        *,
        stop_words: list[str] | tuple[str, ...] = (),
        use_adapter: bool = True,
        **settings,
    ) -> str:
        """One answer to an explicit message list (no history), stopping also at ``stop_words``.

        The agent loop uses this: it keeps its own transcript.
        """
        steps = self._generate(
            messages, self._settings(settings), use_adapter=use_adapter, extra_stops=stop_words
        )
        return _last(steps, ("", ""))[0]

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self._encode(messages))

    def close(self) -> None:
        """Drop the model and give its memory back."""
        from tuner.model import release

        model, self.model = self.model, None
        release(model)

    # ------------------------------------------------------------------ internals

    def _settings(self, overrides: dict) -> GenerationSettings:
        opts = self.settings.updated(**overrides) if overrides else self.settings
        problems = opts.problems()
        if problems:
            raise TunerError("; ".join(problems))
        return opts

    def _fresh(self, text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, {"role": "user", "content": text}]

    def _conversation(self, text: str, max_new_tokens: int) -> list[dict]:
        """System + as many of the latest turns as fit the context window + the new question."""
        reserve = min(max_new_tokens, self.context_window // 2)
        budget = self.context_window - reserve
        system = [{"role": "system", "content": self.system}] if self.system else []
        for start in range(len(self.history) + 1):
            turns = []
            for turn in self.history[start:]:
                turns += [
                    {"role": "user", "content": turn.user},
                    {"role": "assistant", "content": turn.assistant},
                ]
            messages = [*system, *turns, {"role": "user", "content": text}]
            if self.count_tokens(messages) <= budget:
                if start:
                    log.info(
                        "dropped the %d oldest turn(s) to fit the %d-token context",
                        start,
                        self.context_window,
                    )
                    del self.history[:start]
                return messages
        raise TunerError(
            f"the message is too long: with the system prompt it needs more than {budget} tokens "
            f"(context window {self.context_window}, {reserve} kept for the answer); shorten it"
        )

    def _encode(self, messages: list[dict]) -> list[int]:
        prompt = self.chat_template.render(messages, add_generation_prompt=True)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _generate(
        self, messages: list[dict], opts: GenerationSettings, *, use_adapter: bool, extra_stops=()
    ) -> Iterator[tuple[str, str]]:
        """Yield (answer so far, delta) while a worker thread runs ``model.generate``."""
        import torch

        if self.model is None:
            raise TunerError("this chat session was closed; start a new one")
        ids = self._encode(messages)
        if len(ids) >= self.context_window:
            raise TunerError(
                f"the conversation needs {len(ids)} tokens; the model's context is {self.context_window}"
            )
        stops = [*self.stops, *(w for w in extra_stops if w and w not in self.stops)]
        special = [t for t in self.tokenizer.all_special_tokens if t not in stops]
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        cancel = threading.Event()
        streamer = _TokenQueue()
        config = generation_config(
            opts,
            max_new_tokens=min(opts.max_new_tokens, self.context_window - len(ids)),
            eos_ids=self.eos_ids,
            pad_id=self.tokenizer.pad_token_id,
        )
        from transformers import StoppingCriteriaList

        criteria = StoppingCriteriaList([_stopping_criterion(self.tokenizer, len(ids), stops, cancel)])
        failure: list[BaseException] = []
        adapter_off = nullcontext() if use_adapter or not self.has_adapter else self.model.disable_adapter()

        def work():
            try:
                with adapter_off, torch.inference_mode():
                    if opts.seed is not None:
                        torch.manual_seed(opts.seed)
                    self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=config,
                        stopping_criteria=criteria,
                        streamer=streamer,
                    )
            except BaseException as exc:  # handed to the consumer, which re-raises it
                failure.append(exc)
            finally:
                streamer.end()

        # One generation at a time: the adapter switch and the model are shared state.
        with self._lock:
            worker = threading.Thread(target=work, name="tuner-generate", daemon=True)
            worker.start()
            new_ids: list[int] = []
            shown = ""
            stopped = False
            self.last_finish = "cancelled"
            try:
                while True:
                    item = streamer.queue.get()
                    if item is _TokenQueue.DONE:
                        break
                    new_ids += item
                    text = self.tokenizer.decode(new_ids, skip_special_tokens=False)
                    now, stopped = visible_text(text, stops, special)
                    if now != shown and now.startswith(shown):
                        delta, shown = now[len(shown) :], now
                        yield shown, delta
                    if stopped:
                        cancel.set()
                text = self.tokenizer.decode(new_ids, skip_special_tokens=False)
                final, stopped = visible_text(text, stops, special, final=True)
                full = len(new_ids) >= config.max_new_tokens
                self.last_finish = "length" if full and not stopped else "stop"
                self.last_usage = {"prompt_tokens": len(ids), "new_tokens": len(new_ids)}
                if final != shown:
                    delta = final[len(shown) :] if final.startswith(shown) else ""
                    shown = final
                    yield shown, delta
            finally:
                cancel.set()  # the consumer stopped early: let generate() end at the next token
                worker.join()
        if failure:
            exc = failure[0]
            if isinstance(exc, TunerError):
                raise exc
            if "out of memory" in str(exc).lower():
                raise ModelError(
                    "out of GPU memory while generating; lower max_new_tokens or load with --bits 4"
                ) from exc
            raise exc


# -------------------------------------------------------------------------------- loading helpers


def _adapter_folder(path: Path) -> Path:
    """Accept an adapter folder, a checkpoint or a run folder (its final adapter or last checkpoint)."""
    from tuner.export import locate_adapter

    return locate_adapter(path).adapter_dir


def _saved_setting(adapter_dir: Path | None, key: str) -> str | None:
    """A setting (template, system) of the run that trained the adapter, when the adapter folder sits
    in (or was exported from) a run."""
    if adapter_dir is None:
        return None
    from tuner.export import locate_adapter

    return locate_adapter(adapter_dir).config.get(key)


def _load_tokenizer(model_name: str, adapter_dir: Path | None, trust_remote_code: bool):
    """The adapter's saved tokenizer (it carries the training chat template) or the base model's."""
    from tuner.model import load_tokenizer

    if adapter_dir is not None and any((adapter_dir / f).is_file() for f in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            log.warning(
                "could not load the tokenizer saved with the adapter (%s); using the base model's", exc
            )
        else:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            return tokenizer
    return load_tokenizer(model_name, trust_remote_code=trust_remote_code)


def _context_window(model, tokenizer) -> int:
    """Tokens the model handles: its config's max_position_embeddings, or the tokenizer's limit if smaller."""
    config = getattr(model, "config", None)
    sizes = [getattr(config, "max_position_embeddings", None)]
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**7:  # tokenizers without a limit report ~1e30
        sizes.append(limit)
    sizes = [s for s in sizes if isinstance(s, int) and s > 0]
    return min(sizes) if sizes else 2048


def _last(items, default):
    """The last item of an iterator (consuming it), or ``default`` when it is empty."""
    last = default
    for last in items:  # noqa: B007 - only the final value matters
        pass
    return last


def print_stream(deltas: Iterator[str], write: Callable[[str], object]) -> str:
    """Write each delta as it comes (flushing), return the whole text."""
    parts = []
    for delta in deltas:
        parts.append(delta)
        write(delta)
    return "".join(parts)
