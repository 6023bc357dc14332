"""tuner's Trainer subclass: atomic checkpoints, host-side step bookkeeping and deferred log
read-back when asked for."""

from __future__ import annotations

import logging
import os
import shutil

from tuner.data.anchors import ANCHOR_LABELS
from tuner.data.pack import PADDING_TOKENS
from tuner.fast.deferred_log import PendingLog
from tuner.fast.embedding_offload import hand_over_host_ids
from tuner.train.anchor import anchored_loss, refuse_unsupported_plan

log = logging.getLogger(__name__)


def make_trainer_class(plan=None, anchor_kl_weight: float = 0.0):
    """tuner's Trainer class for a run whose tuner.plan.decide.RunPlan is ``plan`` (its lean steps and
    deferred logging; None: Trainer's own bookkeeping); ``anchor_kl_weight``: the weight of the anchor
    loss on batches that carry anchor rows (tuner.train.anchor)."""
    lean = bool(plan is not None and plan.lean)
    defer = bool(plan is not None and plan.deferred_logging)
    if anchor_kl_weight:
        refuse_unsupported_plan(plan)
    from transformers import Trainer
    from transformers.trainer_utils import rotate_checkpoints

    class AtomicCheckpointTrainer(Trainer):
        """Writes each checkpoint into a hidden staging folder, then renames it into place, so a crash
        mid-save never leaves a checkpoint that looks complete but is not.

        With lean steps (the plan's, TUNER_LEAN_STEPS) it also counts tokens and FLOPs on the host: Trainer's
        own count reads a GPU scalar back after every micro-step's backward (a device sync), and its
        FLOP count walks every module and parameter of the model (~2,700 and ~740 for a 7B peft
        model, whatever its width) on every micro-step."""

        _lean = None  # decided at the first step
        _flop_params = None  # parameters counted for FLOPs, cached at the first step
        _defer_logs = None  # the plan's deferred logging, confirmed at the first logging point
        _pending_log = None  # a logged step whose values are still on their way to the host

        def training_step(self, model, inputs, *args, **kwargs):
            # Padding added for a fixed row shape is not a token seen; Trainer counts every input id
            # (before or after this call, depending on its version: the sum is right either way).
            self.state.num_input_tokens_seen -= inputs.pop(PADDING_TOKENS, 0)
            hand_over_host_ids(self.model, inputs)
            if self._lean is None:  # training_arguments turned Trainer's own count off for lean steps
                self._lean = lean and self.args.include_num_input_tokens_seen in ("no", False)
            if not self._lean:
                return super().training_step(model, inputs, *args, **kwargs)
            if "input_ids" in inputs:
                # numel() reads the shape only: no device sync (all tokens, padding included, as
                # Trainer's "all" mode counts them).
                self.state.num_input_tokens_seen += inputs["input_ids"].numel()
            return super().training_step(model, inputs, *args, **kwargs)

        _anchor_kl = None  # optimizer step -> the mean KL to the base of each of its micro-batches

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            anchor_labels = inputs.pop(ANCHOR_LABELS, None)
            if anchor_labels is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Divide as Trainer.compute_loss / training_step would: by the labelled tokens of the whole
            # accumulated batch when the model takes num_items_in_batch (then Trainer does not divide by
            # the accumulation steps, so the KL mean is divided here), else by this micro-batch's.
            scaled = bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None)
            loss, outputs, kl = anchored_loss(
                model,
                self.accelerator.unwrap_model(model),
                dict(inputs),  # anchored_loss takes the labels out; Trainer's batch stays whole
                anchor_labels,
                anchor_kl_weight,
                ce_denominator=num_items_in_batch if scaled else None,
                kl_scale=1.0 / self.current_gradient_accumulation_steps if scaled else 1.0,
            )
            if scaled and self.args.average_tokens_across_devices:
                # Trainer's cross-entropy is multiplied back by the processes that shared the count.
                loss = loss * self.accelerator.num_processes
            if kl is not None and model.training:
                # Kept by step: with deferred logging a line goes out after the next step's forward.
                self._anchor_kl = self._anchor_kl or {}
                self._anchor_kl.setdefault(self.state.global_step + 1, []).append(float(kl))
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if self._anchor_kl and "loss" in logs:
                # The steps this line covers: every one up to the step the line is stamped with.
                done = [step for step in self._anchor_kl if step <= self.state.global_step]
                values = [value for step in done for value in self._anchor_kl.pop(step)]
                if values:
                    logs = {**logs, "anchor_kl": round(sum(values) / len(values), 6)}
            return super().log(logs, *args, **kwargs)

        def prediction_step(self, model, inputs, *args, **kwargs):
            inputs.pop(PADDING_TOKENS, None)
            hand_over_host_ids(self.model, inputs)
            return super().prediction_step(model, inputs, *args, **kwargs)

        def floating_point_ops(self, inputs):
            # Trainer's version counts the model's parameters (walking every module and parameter)
            # on every micro-step; the count cannot change during a run.
            if not self._lean:
                return super().floating_point_ops(inputs)
            if self._flop_params is None:
                self._flop_params = (
                    self.model.num_parameters(exclude_embeddings=True)
                    if hasattr(self.model, "num_parameters")
                    else 0
                )
            ids = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
            return 6 * ids.numel() * self._flop_params if ids is not None else 0

        def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, learning_rate=None, **kwargs):
            # Same log lines as Trainer's, each emitted one logging point late (deferred_log says why)
            # unless the step saves, evaluates or ends the run: then the lines so far go out first.
            # args: model, trial, epoch, ignore_keys_for_eval, start_time, in Trainer's order.
            start_time = args[4] if len(args) > 4 else kwargs.get("start_time")
            if self._defer_logs is None:
                self._defer_logs = defer and not self.is_deepspeed_enabled and self.args.world_size == 1
            if self._defer_logs:
                # Read before the earlier line goes out: Trainer's on_log resets should_log.
                logs_now = self.control.should_log and self.state.global_step > self._globalstep_last_logged
                earlier, self._pending_log = self._pending_log, None
                if earlier is not None:
                    self._emit_log(earlier, start_time)
                if logs_now:
                    pending = PendingLog.snapshot(
                        tr_loss,
                        self.state.global_step - self._globalstep_last_logged,
                        grad_norm,
                        self._get_learning_rate() if learning_rate is None else learning_rate,
                        self.state,
                    )
                    tr_loss -= tr_loss  # in stream order after the copy: the snapshot keeps the sum
                    self._globalstep_last_logged = self.state.global_step
                    self.store_flos()
                    if self._log_line_due_now():
                        self._emit_log(pending, start_time)
                    else:
                        self._pending_log = pending
            # With deferral, nothing is left to log here: Trainer only evaluates and saves.
            super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, learning_rate=learning_rate, **kwargs)

        def train(self, *args, **kwargs):
            try:
                return super().train(*args, **kwargs)
            except BaseException:
                # A run that fails (out of memory, say) still logs the last step that finished.
                self._flush_pending_log()
                raise

        def _flush_pending_log(self) -> None:
            pending, self._pending_log = self._pending_log, None
            if pending is None:
                return
            try:
                self._emit_log(pending, None)
            except Exception as exc:  # a broken CUDA context copies nothing back; the first error stands
                log.warning("the last logged step's values are lost: %s", exc)

        def _log_line_due_now(self) -> bool:
            control = self.control
            return bool(
                control.should_save
                or control.should_evaluate
                or control.should_training_stop
                or self.state.global_step >= self.state.max_steps
            )

        def _emit_log(self, pending: PendingLog, start_time) -> None:
            # Trainer.log stamps the line with the state's step, epoch and token count: those of the
            # step the values belong to, for the length of the call.
            state = self.state
            now = state.global_step, state.epoch, state.num_input_tokens_seen
            state.global_step, state.epoch, state.num_input_tokens_seen = (
                pending.global_step,
                pending.epoch,
                pending.tokens_seen,
            )
            try:
                self._total_loss_scalar += pending.loss_total()
                self.log(pending.logs(), start_time)
            finally:
                state.global_step, state.epoch, state.num_input_tokens_seen = now

        def _save_checkpoint(self, model, trial):
            if self.args.world_size > 1:
                # Every rank writes its own shards into the checkpoint; a rename by one rank would race
                # them. Resume still takes only checkpoints whose trainer_state.json (written last) exists.
                return super()._save_checkpoint(model, trial)
            run_dir = self._get_output_dir(trial=trial)
            staging = os.path.join(run_dir, ".staging")
            name = f"checkpoint-{self.state.global_step}"
            shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
            original = self._get_output_dir
            self._get_output_dir = lambda trial=None: staging  # super() saves under the staging root
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._get_output_dir = original
            final = os.path.join(run_dir, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging, name), final)
            if self.state.best_global_step:
                best = os.path.join(run_dir, f"checkpoint-{self.state.best_global_step}")
                if os.path.exists(best):
                    self.state.best_model_checkpoint = best
            if self.args.should_save:
                rotate_checkpoints(
                    output_dir=run_dir,
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                    use_mtime=False,
                )

    return AtomicCheckpointTrainer
