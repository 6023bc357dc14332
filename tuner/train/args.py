"""transformers' TrainingArguments for a tuner run: the plan's optimizer and step bookkeeping,
precision, schedule, evaluation and checkpoint cadence, DeepSpeed."""

from __future__ import annotations

import os
from pathlib import Path

from tuner.config.deepspeed import deepspeed_config_path
from tuner.core.errors import TunerError
from tuner.train.tracking import tracking_arguments


def _ensure_single_process_env() -> None:
    # DeepSpeed wants a process group even on one GPU; `python -m tuner train` is not torchrun.
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])


def training_arguments(config, run_dir: Path, built, has_eval: bool):
    """TrainingArguments for ``config``, with the optimizer and the step bookkeeping of the run's plan
    (``built``: tuner.train.model.BuiltModel)."""
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    plan = built.plan
    eval_kwargs = {}
    if has_eval:
        if config.eval_freq:
            eval_kwargs = dict(eval_strategy="steps", eval_steps=config.eval_freq)
        else:
            eval_kwargs = dict(eval_strategy="epoch")
    if config.keep_best or config.early_stopping_patience:
        if not has_eval:
            raise TunerError(
                "keep_best and early_stopping_patience need eval data (eval_data_path or test_split)"
            )
        eval_kwargs.update(
            load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False
        )
        if eval_kwargs.get("eval_strategy") == "steps":
            eval_kwargs["save_strategy"] = "steps"
        else:
            eval_kwargs["save_strategy"] = "epoch"
    ds = deepspeed_config_path(config.deepspeed)
    if ds and "RANK" not in os.environ:
        _ensure_single_process_env()
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.accumulative_counts,
        num_train_epochs=config.max_epochs,
        max_steps=config.max_steps if config.max_steps and config.max_steps > 0 else -1,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_norm,
        optim=plan.optimizer,
        seed=config.seed,
        data_seed=config.seed,
        bf16=cuda and built.dtype == torch.bfloat16,
        fp16=cuda and built.dtype == torch.float16,
        use_cpu=not cuda,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        **tracking_arguments(config, run_dir),  # report_to and the run's name (tuner.train.tracking)
        remove_unused_columns=False,
        # Trainer's token count moves a scalar to the GPU, gathers it and reads it back after every
        # micro-step's backward: a device sync that idles the GPU while the host launches the
        # optimizer. On one process the host-side count in our Trainer class gives the same number.
        include_num_input_tokens_seen="no" if plan.lean else "all",
        # Trainer's NaN filter tests every micro-step's loss on the host (a device sync each, 16 per
        # optimizer step with accumulation 16); with lean steps a NaN loss is logged as it is, and
        # tuner.train.callbacks warns that training diverged.
        logging_nan_inf_filter=not plan.lean,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=True,
        # A blocking copy of a batch to the GPU waits for the previous step's last kernel (a device sync
        # per tensor, after which the GPU idles through the step's Python prelude); from pinned memory a
        # non-blocking copy just queues behind it.
        accelerator_config={"non_blocking": plan.async_batch_copy},
        deepspeed=ds,
        **eval_kwargs,
    )
