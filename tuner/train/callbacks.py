"""Trainer callbacks: events for the UI/CLI, stop requests, and evaluation answers while training."""

from __future__ import annotations

import logging
import math
import threading
import time

from transformers import TrainerCallback

from tuner.core.system import gpu_memory_gib
from tuner.runs.events import EventLog

log = logging.getLogger(__name__)


class RunControl:
    """Thread-safe stop/cancel flags set by the job owner and read by the training loop."""

    def __init__(self):
        self._stop = threading.Event()
        self.save_on_stop = True

    def request_stop(self, save: bool = True) -> None:
        self.save_on_stop = save
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()


class EventCallback(TrainerCallback):
    """Turns the Trainer's logs into events: step, loss, lr, grad norm, tokens/s, memory, ETA."""

    def __init__(self, events: EventLog, control: RunControl):
        self.events = events
        self.run_control = control
        self.start = time.time()
        self._last_time = None
        self._last_tokens = 0
        self._start_step = 0
        self._diverged = False  # a non-finite loss was reported
        # When each recent step ended: a log line delivered late (deferred logging hands step N's line
        # over at step N+1, the last one at the end of training) is timed by its own step, not by its
        # delivery, or the last step's tokens/s comes out absurd (thousands on a 2-core CPU).
        self._step_ended: dict[int, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        self._last_time = self.start
        self._last_tokens = state.num_input_tokens_seen or 0
        self._start_step = state.global_step  # > 0 when resuming: ETA counts only this session's speed
        self.events.emit("status", status="running", step=state.global_step, total_steps=state.max_steps)

    def _honour_stop(self, control) -> None:
        if self.run_control.stop_requested:
            control.should_training_stop = True
            control.should_save = self.run_control.save_on_stop

    def on_step_end(self, args, state, control, **kwargs):
        # A tick for progress bars on every step (log lines come only every logging_steps): reads no
        # device value, so it costs the step nothing.
        self.events.notify("step", step=state.global_step, total_steps=state.max_steps)
        self._step_ended[state.global_step] = time.time()
        self._step_ended.pop(state.global_step - 64, None)  # a line is never delivered that late
        self._honour_stop(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        now = time.time()
        elapsed = now - self.start
        tokens = state.num_input_tokens_seen or 0
        tok_s = None
        ended = self._step_ended.get(state.global_step, now)
        if self._last_time is not None and ended > self._last_time and tokens > self._last_tokens:
            tok_s = round((tokens - self._last_tokens) / (ended - self._last_time), 1)
        self._last_time, self._last_tokens = ended, tokens
        done = state.global_step - self._start_step
        eta = None
        if done > 0 and state.max_steps:
            eta = round(elapsed / done * (state.max_steps - state.global_step), 1)
        kind = "eval" if "eval_loss" in logs else "log"
        if "train_loss" in logs:  # the end-of-training summary
            kind = "summary"
        self.events.emit(
            kind,
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=round(state.epoch, 4) if state.epoch is not None else None,
            loss=logs.get("loss"),
            eval_loss=logs.get("eval_loss"),
            lr=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_s=tok_s,
            tokens_seen=tokens or None,
            gpu_mem_gib=gpu_memory_gib(),
            elapsed_s=round(elapsed, 2),
            eta_s=eta,
            train_loss=logs.get("train_loss"),
            anchor_kl=logs.get("anchor_kl"),  # tuner.train.anchor's term, on runs that have one
        )
        loss = logs.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss) and not self._diverged:
            # Trainer's NaN filter (which averages such steps away) is off with lean steps: it reads
            # the loss back after every micro-step. Saying so once is what the user needs.
            self._diverged = True
            self.events.emit(
                "warning",
                step=state.global_step,
                message=f"the training loss is {loss} at step {state.global_step}: training diverged; "
                "lower the learning rate (lr), or use bf16 instead of fp16, and start again",
            )
        # A stop asked for by a listener of this very event takes effect before the checkpoint decision.
        self._honour_stop(control)

    def on_save(self, args, state, control, **kwargs):
        self.events.emit("checkpoint", step=state.global_step, path=f"checkpoint-{state.global_step}")


class EvaluationAnswersCallback(TrainerCallback):
    """Every ``freq`` steps, answer the evaluation inputs so the user can watch the model learn."""

    def __init__(self, generate_answers, freq: int, events: EventLog, samples_path=None):
        self.generate_answers = generate_answers
        self.freq = max(1, int(freq))
        self.events = events
        self.samples_path = samples_path

    def _run(self, state, model):
        started = time.time()
        answers = self.generate_answers(model)
        event = self.events.emit(
            "sample", step=state.global_step, samples=answers, elapsed_s=round(time.time() - started, 2)
        )
        if self.samples_path:
            import json

            with open(self.samples_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event, ensure_ascii=False) + "\n")

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._run(state, model)  # the "before" answers

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.freq == 0:
            self._run(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.freq != 0:
            self._run(state, model)  # the "after" answers
