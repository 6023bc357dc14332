"""Training: data -> tokens -> transformers' Trainer, with a run folder the user can read and resume.

Reading order: ``train()`` at the bottom calls the helpers above it in execution order; the data
comes from :mod:`tuner.train.data`, the model from :mod:`tuner.train.model`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from tuner.chat.generate import greedy_answers
from tuner.config.deepspeed import partitions_weights
from tuner.config.speed import SpeedSettings
from tuner.core.errors import TunerError, storage_error
from tuner.core.io import write_text_atomic
from tuner.core.system import rank as _rank
from tuner.core.system import world_size as _world_size
from tuner.core.workspace import resolve_path, work_dirs

# Data and model setup live in their own modules; their names stay importable from here.
from tuner.models.pissa import initial_adapter, save_as_lora
from tuner.runs import lock as folder_lock
from tuner.runs.events import EVENTS_FILE, EventLog
from tuner.runs.folders import (
    ADAPTER_DIR,
    CONFIG_FILE,
    LOG_FILE,
    SAMPLES_FILE,
    STATUS_FILE,
    last_checkpoint,
    latest_run,
    new_run_dir,
)
from tuner.runs.resume import hold_for_resume
from tuner.train import data as train_data
from tuner.train.args import training_arguments
from tuner.train.callbacks import EvaluationAnswersCallback, EventCallback, RunControl
from tuner.train.collector import long_lived_objects_frozen
from tuner.train.data import encode_for_training, load_training_samples, training_collator, truncation_warning
from tuner.train.model import build_model
from tuner.train.tracking import tracking_callbacks
from tuner.train.trainer import make_trainer_class

log = logging.getLogger(__name__)

OOM_ADVICE = (
    "out of GPU memory. Try, in this order: method qlora (4-bit base), a shorter max_length or "
    "tokens_per_step, batch_size 1 with more accumulative_counts, gradient_checkpointing true, "
    "deepspeed zero2_offload or zero3_offload. The last checkpoint was kept."
)


def oom_advice(loaded) -> str:
    """OOM_ADVICE, led by what undoes tuner's own memory plan when the run used less checkpointing
    than it could have (the plan is an estimate: another process may have taken memory since)."""
    partial = bool(loaded.checkpointing) and not loaded.memory_tight  # fewer layers than it has
    if not partial:
        return OOM_ADVICE
    return (
        f"out of GPU memory with gradient checkpointing {loaded.checkpointing.split(' (')[0]}, as planned "
        "from the GPU memory free at the start. Run again with --set checkpoint_layers=all (every layer) "
        "or checkpoint_layers=offload (every layer, inputs in host memory), or free GPU memory used by other "
        "programs. " + OOM_ADVICE.removeprefix("out of GPU memory. ")
    )


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | stopped | cancelled
    output_dir: Path | None  # the final adapter (or full model); None when cancelled
    steps: int
    train_loss: float | None


# ------------------------------------------------------------------------------------------ trainer


def packing_problem(model, tokenizer, loaded, config) -> str | None:
    """Why packed rows would train this model wrongly (tuner.train.packing_probe), or None. Under ZeRO-3 the
    weights exist only inside DeepSpeed's engine, which does not exist yet: there the model's own
    attention code is trusted (transformers' architectures honour packed position ids)."""
    if partitions_weights(config.deepspeed):
        return None
    import torch

    from tuner.train.packing_probe import packs_in_isolation

    # looked up at call time: tests record the rows the probe and training build from one patch
    collator = train_data.make_collator(tokenizer, packed=True, attention=loaded.attention)
    vocab = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
    try:
        if packs_in_isolation(model, collator, vocab):
            return None
    except torch.cuda.OutOfMemoryError:
        raise  # two short rows did not fit: training would not either, and says what to do
    except Exception as exc:  # a check that cannot run proves nothing: do not pack on trust
        return f"the check that packed samples stay apart failed to run ({type(exc).__name__}: {exc})"
    return (
        "its attention does not keep packed samples apart (it ignores the restarting position ids), "
        "so each sample would attend to the ones before it in its row"
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
    from tuner.config.files import save_config

    checkpoint = None
    if resume:
        if run_dir is None:  # the run this config trained: its output_dir, else the latest of its name
            run_dir = resolve_path(config.output_dir) if config.output_dir else latest_run(config.name)
        run_dir = Path(run_dir) if run_dir else None
        if run_dir is not None and _rank() == 0:
            hold_for_resume(run_dir, config)  # the resume contract and the folder's lock (tuner.runs)
        checkpoint = last_checkpoint(run_dir) if run_dir else None
        if checkpoint is None:
            if run_dir is not None and _rank() == 0:
                folder_lock.release(run_dir)
            where = run_dir or f"work_dirs/{config.name}"
            raise TunerError(f"nothing to resume: no complete checkpoint in {where}; train without --resume")
        return run_dir, checkpoint
    if config.output_dir:
        run_dir = resolve_path(config.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    elif run_dir is None:
        run_dir = _shared_run_dir(config.name) if _world_size() > 1 else new_run_dir(config.name)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    if _rank() != 0:
        return run_dir, checkpoint
    folder_lock.hold_new_run(run_dir)  # one training per folder; a folder holding another run is refused
    # The resolved config: training it again reproduces this run (in a new folder).
    resolved = config.to_dict()
    resolved["output_dir"] = None
    from tuner.config.files import config_from_dict

    try:
        save_config(config_from_dict(resolved), run_dir / CONFIG_FILE, force=True)
    except BaseException:
        folder_lock.release(run_dir)
        raise
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
    from tuner.models.load import count_parameters, load_tokenizer, release

    control = control or RunControl()
    settings = SpeedSettings.from_env(
        os.environ
    )  # once per run; a bad value fails before anything is written
    run_dir, checkpoint = prepare_run(config, run_dir=run_dir, resume=resume)
    main_process = _rank() == 0  # under torchrun only rank 0 writes the run folder's files
    events = EventLog(run_dir / EVENTS_FILE, listener) if main_process else EventLog()
    try:
        handler = _attach_log_file(run_dir)
    except BaseException:  # the folder is given back, or this process would hold it until it exits
        if main_process:
            folder_lock.release(run_dir)
        raise
    model = trainer = loaded = None
    facts: dict = {}
    try:
        events.emit("status", status="preparing", message=f"run folder {run_dir}", run_dir=str(run_dir))
        set_seed(config.seed)
        events.emit("status", status="loading", message=f"loading the tokenizer of {config.model}")
        tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
        template = resolve_template(tokenizer, config.template)
        train_samples, eval_samples = load_training_samples(config)
        counted = f"{len(train_samples)} training" + (
            f" and {len(eval_samples)} eval" if eval_samples else ""
        )
        events.emit("status", status="loading", message=f"encoding {counted} samples")
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
        cut = truncation_warning(info, config)
        if cut:
            log.warning(cut)
            events.emit("warning", message=cut)

        events.emit("status", status="loading", message=f"loading the model {config.model}")
        model, loaded = build_model(config, settings)
        # how this run uses the machine, in every status.json written from here on
        facts = {"speed_settings": settings.as_dict(), "plan": loaded.plan.as_dict()}
        problem = packing_problem(model, tokenizer, loaded, config) if config.pack_to_max_length else None
        if problem:
            warning = (
                f"{config.model}: {problem}. "
                "Training one sample per row instead (pack_to_max_length false: same data, slower)."
            )
            log.warning(warning)
            events.emit("status", status="loading", message=warning)
            config = dataclasses.replace(config, pack_to_max_length=False)
            train_rows, _ = encode_for_training(train_samples, tokenizer, template, config)
            if eval_samples:
                eval_rows, _ = encode_for_training(eval_samples, tokenizer, template, config)
        trainable, total = count_parameters(model)
        message = (
            f"model {config.model}: {loaded.describe()}; trainable {trainable:,} of {total:,} parameters"
        )
        log.info(message)
        events.emit("status", status="loading", message=message)

        from datasets import Dataset

        trainer_cls = make_trainer_class(loaded.plan, anchor_kl_weight=config.anchor_kl_weight)
        args = training_arguments(config, run_dir, loaded, has_eval=bool(eval_rows))
        callbacks = [EventCallback(events, control), *tracking_callbacks(config, run_dir, main_process)]
        if config.evaluation_inputs:

            def generate(m):
                answers = greedy_answers(
                    m,
                    tokenizer,
                    template,
                    config.evaluation_inputs,
                    system=config.system,
                    max_new_tokens=config.evaluation_max_new_tokens,
                )
                return [{"prompt": a.prompt, "answer": a.text} for a in answers]

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
            data_collator=training_collator(tokenizer, config, loaded),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # our events replace its raw dict prints
        if control.stop_requested:
            # Stopped while data and model were loading: nothing was trained, so nothing is saved.
            message = "cancelled before the first step; nothing trained or saved"
            _write_status(run_dir, **facts, status="cancelled", steps=0, output=None, finished=time.time())
            events.emit("status", status="cancelled", step=0, run_dir=str(run_dir), message=message)
            return RunResult(run_dir, "cancelled", None, 0, None)
        _write_status(run_dir, **facts, status="running", started=time.time())
        try:
            with long_lived_objects_frozen():
                result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except torch.cuda.OutOfMemoryError as exc:
            raise TunerError(oom_advice(loaded)) from exc

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
            **facts,
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
        _write_status(run_dir, **facts, status="failed", error=str(exc), finished=time.time())
        events.emit("error", status="failed", message=str(exc))
        raise
    except Exception as exc:
        refused = storage_error(exc)  # a full or read-only disk: say so, and what to do
        if refused is not None:
            with suppress(OSError):  # the status may not fit on a full disk: tuner.runs.status tells then
                _write_status(run_dir, **facts, status="failed", error=str(refused), finished=time.time())
                events.emit("error", status="failed", message=str(refused))
            raise refused from exc
        log.exception("training failed")
        _write_status(
            run_dir, **facts, status="failed", error=f"{type(exc).__name__}: {exc}", finished=time.time()
        )
        events.emit(
            "error",
            status="failed",
            message=f"{type(exc).__name__}: {exc} (traceback in {run_dir / LOG_FILE})",
        )
        raise
    except BaseException:  # Ctrl-C, SIGTERM (the CLI turns it into SystemExit): never left "running"
        with suppress(OSError):
            _write_status(run_dir, **facts, status="interrupted", error="interrupted", finished=time.time())
        raise
    finally:
        if main_process:
            folder_lock.release(run_dir)
        _detach_log_file(handler)
        if trainer is not None:
            trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
        if loaded is not None and loaded.layer_graphs is not None:
            # the CUDA graphs' memory pools go with the graphs: drop them now, not when the collector
            # finds the cycle through the layers' patched forward (the app trains again in this process)
            loaded.layer_graphs.remove()
        del trainer, model, loaded
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
    initial = initial_adapter(trainer.model)
    if initial is not None:  # a PiSSA run: saved as the plain LoRA that fits the original base
        save_as_lora(staging, initial)
    tokenizer.chat_template = template.chat_template
    tokenizer.save_pretrained(str(staging))
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)
