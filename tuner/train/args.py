"""transformers' TrainingArguments for a tuner run: the optimizer ``auto`` picks, precision, schedule,
evaluation and checkpoint cadence, DeepSpeed."""

from __future__ import annotations

import os
from pathlib import Path

from tuner.config.deepspeed import deepspeed_config_path
from tuner.config.schema import method_bits
from tuner.config.speed import lean_steps, switch
from tuner.core.errors import TunerError
from tuner.core.system import world_size


def _ensure_single_process_env() -> None:
    # DeepSpeed wants a process group even on one GPU; `python -m tuner train` is not torchrun.
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])


def auto_optimizer(config, loaded, cuda: bool) -> str:
    """AdamW as ``optimizer: auto`` picks it. On a GPU: torch's fused AdamW (one kernel launch for all
    LoRA weights; bitsandbytes' paged AdamW launches one per weight, which the host cannot hide behind
    short steps), except for a 4/8-bit base that needed every layer checkpointed to fit: there paged
    AdamW's state can move to host memory when a long row spikes. Under DeepSpeed as before this
    choice existed (paged AdamW for 4/8-bit bases, else torch's unfused AdamW): its offload configs
    keep the optimizer state in host memory, where the fused kernel cannot run."""
    if not cuda:
        return "adamw_torch"
    if config.deepspeed:
        return "paged_adamw_32bit" if method_bits(config) else "adamw_torch"
    if method_bits(config) and loaded.memory_tight:
        return "paged_adamw_32bit"
    return "adamw_torch_fused"


def accelerator_config(cuda: bool, deepspeed) -> dict:
    """accelerate's settings for the run's DataLoader. A blocking copy of a batch to the GPU waits for
    the previous step's last kernel (a device sync per tensor, after which the GPU idles through the
    step's Python prelude); from pinned memory a non-blocking copy just queues behind it. Measured on
    one process without DeepSpeed, and only used there."""
    measured_here = cuda and not deepspeed and world_size() <= 1
    return {"non_blocking": measured_here and switch("TUNER_ASYNC_BATCH_COPY") == "on"}


def training_arguments(config, run_dir: Path, loaded, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    from tuner.train.tracking import tracking_arguments

    cuda = torch.cuda.is_available()
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = auto_optimizer(config, loaded, cuda)
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
        optim=optimizer,
        seed=config.seed,
        data_seed=config.seed,
        bf16=cuda and loaded.dtype == torch.bfloat16,
        fp16=cuda and loaded.dtype == torch.float16,
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
        include_num_input_tokens_seen="no" if lean_steps() else "all",
        # Trainer's NaN filter tests every micro-step's loss on the host (a device sync each, 16 per
        # optimizer step with accumulation 16); with lean steps a NaN loss is logged as it is, and
        # tuner.train.callbacks warns that training diverged.
        logging_nan_inf_filter=not lean_steps(),
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=True,
        accelerator_config=accelerator_config(cuda, ds),
        deepspeed=ds,
        **eval_kwargs,
    )
