"""Training: data -> tokens -> transformers' Trainer, with a run folder the user can read and resume.

Reading order: ``train()`` at the bottom calls the helpers above it in execution order.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tuner.callbacks import EvaluationAnswersCallback, EventCallback, RunControl
from tuner.config import DEEPSPEED_PRESETS
from tuner.errors import DataError, TunerError
from tuner.events import EVENTS_FILE, EventLog
from tuner.io import write_text_atomic
from tuner.run_dirs import (
    ADAPTER_DIR,
    CONFIG_FILE,
    LOG_FILE,
    SAMPLES_FILE,
    STATUS_FILE,
    last_checkpoint,
    latest_run,
    new_run_dir,
)
from tuner.speed import checkpoint_reentrant, lean_steps, switch
from tuner.speed import rank as _rank
from tuner.speed import world_size as _world_size
from tuner.trainer import make_trainer_class
from tuner.workspace import work_dirs

log = logging.getLogger(__name__)

OOM_ADVICE = (
    "out of GPU memory. Try, in this order: method qlora (4-bit base), a shorter max_length or "
    "tokens_per_step, batch_size 1 with more accumulative_counts, gradient_checkpointing true, "
    "deepspeed zero2_offload or zero3_offload. The last checkpoint was kept."
)


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | stopped | cancelled
    output_dir: Path | None  # the final adapter (or full model); None when cancelled
    steps: int
    train_loss: float | None


# --------------------------------------------------------------------------------------------- data


def _resolve_path(path: str) -> Path:
    from tuner.workspace import workspace_dir

    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else workspace_dir() / candidate


def load_training_samples(config) -> tuple[list, list]:
    """(train, eval) samples in the internal form; bad records stop the run with their location."""
    from tuner.data.formats import load_samples

    result = load_samples(_resolve_path(config.data_path), config.data_format, system=config.system)
    if result.problems:
        first = result.problems[0]
        raise DataError(
            f"{len(result.problems)} bad record(s), first: {first}",
            hint=f"run `python -m tuner check-data {config.data_path}` for the full list, fix them, then train again",
        )
    samples = list(result.samples)
    if not samples:
        raise DataError(
            "no usable samples", path=config.data_path, hint="check the file's format with check-data"
        )
    if config.eval_data_path:
        eval_result = load_samples(
            _resolve_path(config.eval_data_path), config.data_format, system=config.system
        )
        if eval_result.problems:
            raise DataError(f"eval data: {eval_result.problems[0]}", hint="run check-data on the eval file")
        return samples, list(eval_result.samples)
    if config.test_split and config.test_split > 0:
        order = list(range(len(samples)))
        random.Random(config.seed).shuffle(order)
        n_test = max(1, int(round(len(samples) * config.test_split)))
        test_idx = set(order[:n_test])
        return [s for i, s in enumerate(samples) if i not in test_idx], [samples[i] for i in sorted(test_idx)]
    return samples, []


def encode_for_training(samples, tokenizer, template, config) -> tuple[list, dict]:
    """Tokens + labels, packed into rows of ``tokens_per_step`` tokens when packing is on."""
    from tuner.data.encode import encode_samples
    from tuner.data.pack import pack_samples, pack_stats

    encoded, stats = encode_samples(samples, tokenizer, template, config.max_length)
    info = {"encode": stats.as_dict() if hasattr(stats, "as_dict") else dict(vars(stats))}
    if not encoded:
        raise DataError(
            "no sample kept a supervised token after truncation",
            hint="raise max_length or check that the data has answers",
        )
    if config.pack_to_max_length:
        budget = config.tokens_per_step or config.max_length
        rows = pack_samples(encoded, budget, seed=config.seed)
        stats_ = pack_stats(encoded, rows, budget)
        info["pack"] = stats_.as_dict() if hasattr(stats_, "as_dict") else dict(vars(stats_))
        return rows, info
    return encoded, info


def make_collator(tokenizer, packed: bool, attention: str = "sdpa"):
    """Packed rows (with sample boundaries for varlen attention kernels) or padded samples."""
    from tuner.attention import NAME as VARLEN
    from tuner.data.pack import PackedCollator, PaddingCollator

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if not packed:
        return PaddingCollator(pad_token_id=pad_id)
    return PackedCollator(pad_token_id=pad_id, boundaries=attention in (VARLEN, "flash_attention_2"))


# -------------------------------------------------------------------------------------------- model


def method_bits(config) -> int | None:
    return {"4bit": 4, "8bit": 8}.get(config.quantization) or (4 if config.method == "qlora" else None)


def build_model(config):
    """Base model (+ LoRA unless full fine-tuning), with gradient checkpointing as asked."""
    from tuner.model import add_lora, load_model

    bits = method_bits(config)
    loaded = load_model(
        config.model, bits=bits, precision=config.precision, trust_remote_code=config.trust_remote_code
    )
    model = loaded.model
    model.config.use_cache = False  # caches are useless in training and break position-id packing
    if switch("TUNER_VARLEN") == "on":
        from tuner.attention import NAME as VARLEN
        from tuner.attention import use_for_training

        switched, why = use_for_training(model)
        if switched:
            loaded.attention, loaded.attention_reason = VARLEN, why
    if switch("TUNER_LIGER") == "on" and not partitions_weights(config):
        from tuner.model import apply_liger

        loaded.liger = apply_liger(model)
    reentrant = checkpoint_reentrant()
    if config.method == "full":
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            if reentrant:
                model.enable_input_require_grads()
        return model, loaded
    model = add_lora(
        model,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        targets=config.lora_targets,
        quantized=bits is not None,
        gradient_checkpointing=config.gradient_checkpointing,
        reentrant=reentrant,
        upcast=switch("TUNER_KBIT_UPCAST") == "on",
    )
    return model, loaded


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


# ------------------------------------------------------------------------------------------ trainer


def partitions_weights(config) -> bool:
    """True under DeepSpeed ZeRO-3, whose weights exist only inside their module's forward: Liger's
    fused cross-entropy reads the LM head's weight directly, so it stays off there."""
    path = deepspeed_config_path(config.deepspeed)
    if not path:
        return False
    try:
        stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError):
        return False
    return stage == 3


def deepspeed_config_path(value: str | None) -> str | None:
    """A preset name (zero2, ...) -> the JSON shipped in tuner/deepspeed; a path stays a path."""
    if not value:
        return None
    if value in DEEPSPEED_PRESETS:
        return str(Path(__file__).parent / "deepspeed" / f"{value}.json")
    path = _resolve_path(value)
    if not path.is_file():
        raise TunerError(
            f"deepspeed config {value} not found; use one of {', '.join(DEEPSPEED_PRESETS)} or a .json file"
        )
    return str(path)


def _ensure_single_process_env() -> None:
    # DeepSpeed wants a process group even on one GPU; `python -m tuner train` is not torchrun.
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])


def training_arguments(config, run_dir: Path, loaded, has_eval: bool):
    import torch
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    optimizer = config.optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_32bit" if (method_bits(config) and cuda) else "adamw_torch"
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
        report_to="none",
        remove_unused_columns=False,
        # Trainer's token count moves a scalar to the GPU, gathers it and reads it back after every
        # micro-step's backward: a device sync that idles the GPU while the host launches the
        # optimizer. On one process the host-side count in our Trainer class gives the same number.
        include_num_input_tokens_seen="no" if lean_steps() else "all",
        disable_tqdm=True,
        dataloader_num_workers=0,
        deepspeed=ds,
        **eval_kwargs,
    )


# --------------------------------------------------------------------------------------------- run


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    for name in ("tuner", "transformers.trainer"):
        logging.getLogger(name).addHandler(handler)
        if logging.getLogger(name).level in (logging.NOTSET,) or logging.getLogger(name).level > logging.INFO:
            logging.getLogger(name).setLevel(logging.INFO)
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
    for name in ("tuner", "transformers.trainer"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def _write_status(run_dir: Path, **fields) -> None:
    if _rank() != 0:
        return

    write_text_atomic(run_dir / STATUS_FILE, json.dumps(fields, ensure_ascii=False, indent=2) + "\n")


def _shared_run_dir(name: str) -> Path:
    """Under torchrun every rank must use the folder rank 0 made: rank 0 creates it and leaves its path
    in a marker named after this launch (master address and port); the other ranks wait for it."""
    launch = f"{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
    marker = work_dirs() / name / f".launch-{re.sub(r'[^A-Za-z0-9_.-]', '_', launch)}"
    if _rank() == 0:
        run_dir = new_run_dir(name)
        write_text_atomic(marker, str(run_dir))
        return run_dir
    deadline = time.time() + 300
    while not marker.is_file():
        if time.time() > deadline:
            raise TunerError(
                f"rank {_rank()}: rank 0 did not create the run folder ({marker}) within 5 minutes"
            )
        time.sleep(0.2)
    return Path(marker.read_text(encoding="utf-8").strip())


def prepare_run(config, *, run_dir: Path | None = None, resume: bool = False) -> tuple[Path, Path | None]:
    """Pick the run folder (new, given, or the latest one to resume) and the checkpoint to resume from."""
    from tuner.config import save_config

    checkpoint = None
    if resume:
        run_dir = Path(run_dir) if run_dir else latest_run(config.name)
        checkpoint = last_checkpoint(run_dir) if run_dir else None
        if checkpoint is None:
            where = run_dir or f"work_dirs/{config.name}"
            raise TunerError(f"nothing to resume: no complete checkpoint in {where}; train without --resume")
        return run_dir, checkpoint
    if config.output_dir:
        run_dir = _resolve_path(config.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    elif run_dir is None:
        run_dir = _shared_run_dir(config.name) if _world_size() > 1 else new_run_dir(config.name)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    if _rank() != 0:
        return run_dir, checkpoint
    # The resolved config: training it again reproduces this run (in a new folder).
    resolved = config.to_dict()
    resolved["output_dir"] = None
    from tuner.config import config_from_dict

    save_config(config_from_dict(resolved), run_dir / CONFIG_FILE, force=True)
    return run_dir, checkpoint


def train(
    config,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    control: RunControl | None = None,
    listener=None,
) -> RunResult:
    """Run one training job to completion, stop or cancel. Raises TunerError for user errors."""
    import torch
    from transformers import EarlyStoppingCallback, set_seed

    from tuner.data.templates import resolve_template
    from tuner.model import count_parameters, load_tokenizer, release

    control = control or RunControl()
    run_dir, checkpoint = prepare_run(config, run_dir=run_dir, resume=resume)
    main_process = _rank() == 0  # under torchrun only rank 0 writes the run folder's files
    events = EventLog(run_dir / EVENTS_FILE, listener) if main_process else EventLog()
    handler = _attach_log_file(run_dir)
    model = trainer = None
    try:
        events.emit("status", status="preparing", message=f"run folder {run_dir}", run_dir=str(run_dir))
        set_seed(config.seed)
        tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        template = resolve_template(tokenizer, config.template)
        train_samples, eval_samples = load_training_samples(config)
        train_rows, info = encode_for_training(train_samples, tokenizer, template, config)
        eval_rows = []
        if eval_samples:
            eval_rows, _ = encode_for_training(eval_samples, tokenizer, template, config)
        log.info(
            "data: %d train samples -> %d rows; %d eval rows; %s",
            len(train_samples),
            len(train_rows),
            len(eval_rows),
            json.dumps(info),
        )
        events.emit("status", status="loading", message=f"template {template.name}; data {json.dumps(info)}")

        model, loaded = build_model(config)
        trainable, total = count_parameters(model)
        message = (
            f"model {config.model}: {loaded.describe()}; trainable {trainable:,} of {total:,} parameters"
        )
        log.info(message)
        events.emit("status", status="loading", message=message)

        from datasets import Dataset

        trainer_cls = make_trainer_class()
        args = training_arguments(config, run_dir, loaded, has_eval=bool(eval_rows))
        callbacks = [EventCallback(events, control)]
        if config.evaluation_inputs:

            def generate(m):
                return answer_questions(
                    m,
                    tokenizer,
                    template,
                    config.evaluation_inputs,
                    config.system,
                    config.evaluation_max_new_tokens,
                )

            callbacks.append(
                EvaluationAnswersCallback(
                    generate, config.evaluation_freq, events, run_dir / SAMPLES_FILE if main_process else None
                )
            )
        if config.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            data_collator=make_collator(
                tokenizer, packed=config.pack_to_max_length, attention=loaded.attention
            ),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our events replace its raw dict prints
        if control.stop_requested:
            # Stopped while data and model were loading: nothing was trained, so nothing is saved.
            message = "cancelled before the first step; nothing trained or saved"
            _write_status(run_dir, status="cancelled", steps=0, output=None, finished=time.time())
            events.emit("status", status="cancelled", step=0, run_dir=str(run_dir), message=message)
            return RunResult(run_dir, "cancelled", None, 0, None)
        _write_status(run_dir, status="running", started=time.time())
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except torch.cuda.OutOfMemoryError as exc:
            raise TunerError(OOM_ADVICE) from exc

        status = "completed"
        if control.stop_requested:
            status = "stopped" if control.save_on_stop else "cancelled"
        output_dir = None
        if status != "cancelled":
            output_dir = run_dir / ADAPTER_DIR
            _save_final(trainer, tokenizer, template, output_dir)
        train_loss = getattr(result, "training_loss", None)
        _write_status(
            run_dir,
            status=status,
            steps=trainer.state.global_step,
            train_loss=train_loss,
            output=str(output_dir) if output_dir else None,
            finished=time.time(),
        )
        events.emit(
            "status",
            status=status,
            step=trainer.state.global_step,
            total_steps=trainer.state.max_steps,
            output=str(output_dir) if output_dir else None,
            run_dir=str(run_dir),
            message=f"{status}: {output_dir or 'nothing saved'}",
        )
        return RunResult(run_dir, status, output_dir, trainer.state.global_step, train_loss)
    except TunerError as exc:
        _write_status(run_dir, status="failed", error=str(exc), finished=time.time())
        events.emit("error", status="failed", message=str(exc))
        raise
    except Exception as exc:
        log.exception("training failed")
        _write_status(run_dir, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time())
        events.emit(
            "error",
            status="failed",
            message=f"{type(exc).__name__}: {exc} (traceback in {run_dir / LOG_FILE})",
        )
        raise
    finally:
        _detach_log_file(handler)
        if trainer is not None:
            trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
        del trainer, model
        release()


def _save_final(trainer, tokenizer, template, output_dir: Path) -> None:
    """The final adapter (or model), with the tokenizer carrying the training chat template; atomic."""
    staging = output_dir.with_name(f".{output_dir.name}.tmp")
    if _rank() == 0:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every rank takes part (ZeRO-3 gathers the weights); rank 0 writes
    trainer.accelerator.wait_for_everyone()
    if _rank() != 0:
        return
    tokenizer.chat_template = template.chat_template
    tokenizer.save_pretrained(str(staging))
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)
