"""tuner's Trainer subclass: atomic checkpoints, and host-side step bookkeeping when asked for."""

from __future__ import annotations

import os
import shutil

from tuner.data.pack import PADDING_TOKENS
from tuner.speed import lean_steps


def make_trainer_class():
    from transformers import Trainer
    from transformers.trainer_utils import rotate_checkpoints

    from tuner.embedding_offload import hand_over_host_ids

    class AtomicCheckpointTrainer(Trainer):
        """Writes each checkpoint into a hidden staging folder, then renames it into place, so a crash
        mid-save never leaves a checkpoint that looks complete but is not.

        With lean steps (TUNER_STEP_OVERHEAD) it also counts tokens and FLOPs on the host: Trainer's
        own count reads a GPU scalar back after every micro-step's backward (a device sync), and its
        FLOP count walks every module and parameter of the model (~2,700 and ~740 for a 7B peft
        model, whatever its width) on every micro-step."""

        _lean = None  # decided at the first step
        _flop_params = None  # parameters counted for FLOPs, cached at the first step

        def training_step(self, model, inputs, *args, **kwargs):
            # Padding added for a fixed row shape is not a token seen; Trainer counts every input id
            # (before or after this call, depending on its version: the sum is right either way).
            self.state.num_input_tokens_seen -= inputs.pop(PADDING_TOKENS, 0)
            hand_over_host_ids(self.model, inputs)
            if self._lean is None:  # training_arguments turned Trainer's own count off for lean steps
                self._lean = lean_steps() and self.args.include_num_input_tokens_seen in ("no", False)
            if not self._lean:
                return super().training_step(model, inputs, *args, **kwargs)
            if "input_ids" in inputs:
                # numel() reads the shape only: no device sync (all tokens, padding included, as
                # Trainer's "all" mode counts them).
                self.state.num_input_tokens_seen += inputs["input_ids"].numel()
            return super().training_step(model, inputs, *args, **kwargs)

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
