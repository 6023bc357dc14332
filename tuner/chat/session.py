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

The pieces live in their own modules: ``tuner.chat.text`` (chat templates, stop words, visible
text), ``tuner.chat.generate`` (generation settings, streamer, stopping criterion) and
``tuner.chat.load`` (adapter folder, tokenizer, context window). Their names that other modules
use are re-exported here, so ``from tuner.chat import ...`` keeps working.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

# Re-exported: callers import these from tuner.chat. None of these modules imports tuner.chat at
# load time, so there is no import cycle.
from tuner.chat.generate import GenerationSettings, TokenQueue, generation_config, stopping_criterion
from tuner.chat.load import adapter_folder, chat_tokenizer, model_context_window, saved_setting
from tuner.chat.text import resolve_chat_template, stop_strings, stop_token_ids, visible_text
from tuner.core.errors import ModelError, TunerError
from tuner.models.load import release

log = logging.getLogger(__name__)


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
        precision: auto, bf16, fp16 or fp32 (see tuner.models.load.resolve_dtype).
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
            adapter_dir = adapter_folder(adapter_dir)
            self.adapter = adapter_dir
        if self.tokenizer is None:
            self.tokenizer = chat_tokenizer(self.model_name, adapter_dir, self.trust_remote_code)
        if self.model is None:
            from tuner.models.load import load_adapter, load_model

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
            self.tokenizer, self.template or saved_setting(adapter_dir, "template")
        )
        if self.system is None:
            # Answer with the system prompt the adapter was trained with, or its identity is lost.
            self.system = saved_setting(adapter_dir, "system")
        self.eos_ids = stop_token_ids(self.tokenizer, self.chat_template)
        self.stops = stop_strings(self.tokenizer, self.chat_template)
        if self.context_window is None:
            self.context_window = model_context_window(self.model, self.tokenizer)

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

    def stream_messages(
        self,
        messages: list[dict],
        *,
        stop_words: list[str] | tuple[str, ...] = (),
        use_adapter: bool = True,
        **settings,
    ) -> Iterator[str]:
        """Deltas of one answer to an explicit message list (no history), stopping also at
        ``stop_words``. The OpenAI-compatible server (tuner.chat.server) answers through this, so its
        answers pass the same template, stop words and visible-text filter as the app's."""
        for _answer, delta in self._generate(
            messages, self._settings(settings), use_adapter=use_adapter, extra_stops=stop_words
        ):
            yield delta

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self._encode(messages))

    def close(self) -> None:
        """Drop the model and give its memory back."""

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
        streamer = TokenQueue()
        config = generation_config(
            opts,
            max_new_tokens=min(opts.max_new_tokens, self.context_window - len(ids)),
            eos_ids=self.eos_ids,
            pad_id=self.tokenizer.pad_token_id,
        )
        from transformers import StoppingCriteriaList

        criteria = StoppingCriteriaList([stopping_criterion(self.tokenizer, len(ids), stops, cancel)])
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
                    if item is TokenQueue.DONE:
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
