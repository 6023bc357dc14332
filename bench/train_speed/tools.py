"""The tools a row can train with: tuner's own training path, the plain loop of issue 6 and Unsloth,
the peer of issue 16.

Every tool trains the same folder (``shapes.ensure_model``) on the same token rows with the recipe in
``spec.py`` (LoRA r64 / alpha 16 on the seven projections of each layer, learning rate, clipping).
They differ only where the tool itself decides: how it loads and quantizes, checkpoints, attends,
which optimizer and precision it picks. A tool is a function ``run(job) -> dict`` whose dict joins
the row (``load_s``, ``precision``, ``optimizer``, ``attention``, ``trainable_params``,
``checkpointing``... ); it calls ``job.clock.begin()`` once the model is loaded, ``job.clock.step_end()``
after each optimizer step and ``job.clock.loss(value)`` when it has a loss. Adding a tool is one
function and one ``TOOLS`` entry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.train_speed.spec import (
    LORA_MODULES,
    LR,
    MAX_NORM,
    PLAIN_REENTRANT,
    VARIANT_KINDS,
    Spec,
    tuner_rows,
)


@dataclass
class Job:
    """Everything a tool needs for one row."""

    spec: Spec
    model_dir: Path
    rows: list[list[int]]  # warm-up + timed steps, one row of spec.seq token ids each
    clock: Any  # measure.StepClock
    work: Path  # a scratch folder, removed after the row
    lora: dict  # spec.LORA with --lora-dropout applied
    overrides: dict = field(default_factory=lambda: {kind: {} for kind in VARIANT_KINDS})  # --variant
    plain_precision: str = "recipe"


@dataclass(frozen=True)
class Tool:
    run: Callable[[Job], dict]
    packs: bool = False  # trains --sample-len rows (samples packed into one row)
    variants: bool = False  # takes --variant overrides
    # patches library classes for the whole process: its rows never share a process with another
    # tool's (the driver gives them a child of their own even with --in-process)
    patches_process: bool = False
    needs: str | None = None  # the module it imports, named in the row's error when missing
    # set (unless already set) before that import: the device reaches no network
    offline_env: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ what a model did


def checkpointing_mode(model) -> str | None:
    """How the model's layers are checkpointed: "reentrant", "non-reentrant", or None when off."""
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and func is not None:
            keywords = getattr(func, "keywords", {}) or {}
            return "reentrant" if keywords.get("use_reentrant", True) else "non-reentrant"
    return None


def checkpointed_layers(model, graphs=None) -> int:
    """Decoder layers that recompute their activations in the backward pass (``graphs``: tuner's
    tuner.fast.layer_graphs.LayerGraphs, which holds the flags of the layers it checkpoints itself)."""
    from tuner.models.layers import checkpointing_layers

    if graphs is not None and graphs.checkpointed:
        return sum(graphs.checkpointed)
    return len(checkpointing_layers(model))


def offloaded_layers(model) -> int:
    """Checkpointed layers whose saved inputs wait in host memory (tuner.fast.checkpoint_offload)."""
    try:
        from tuner.fast.checkpoint_offload import offloaded_checkpoint
    except ImportError:
        return 0
    return sum(
        1 for m in model.modules() if getattr(m, "_gradient_checkpointing_func", None) is offloaded_checkpoint
    )


def _graphs_info(graphs) -> dict | None:
    """What tuner.fast.layer_graphs did in a row: layers graphed, forward passes replayed, or why not."""
    if graphs is None:
        return None
    return dict(
        layers=len(graphs.layers),
        checkpointed=sum(graphs.checkpointed),
        checkpointed_graphed=graphs.checkpoint_graphs is not None,
        replays=graphs.replays,
        failed=graphs.failed,
        skipped=graphs.skipped,
    )


def apply_liger(shape: str) -> bool:
    """--liger: Liger's fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy), patched
    into the model classes before loading, for whichever tool runs. True when applied."""
    from bench.train_speed.shapes import SHAPE_CONFIGS

    try:
        from liger_kernel import transformers as liger
    except ImportError:
        print("[bench] --liger: liger_kernel is not importable; running without it", flush=True)
        return False
    family = SHAPE_CONFIGS[shape]["family"]
    getattr(liger, f"apply_liger_kernel_to_{family}")()
    return True


# ------------------------------------------------------------------------------------------- tuner


def run_tuner(job: Job) -> dict:
    """tuner's path: build_model + training_arguments + tuner's Trainer class, collator and events,
    as tuner.train.run assembles them. The speed settings are read from the environment once, as a
    run reads them (a variant's env.* values are in it), and recorded with the plan they gave."""
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    from tuner.config.files import config_from_dict
    from tuner.config.speed import SpeedSettings
    from tuner.models.load import count_parameters, load_tokenizer
    from tuner.runs.events import EventLog
    from tuner.train.args import training_arguments
    from tuner.train.callbacks import EventCallback, RunControl
    from tuner.train.collector import long_lived_objects_frozen
    from tuner.train.data import training_collator
    from tuner.train.model import build_model
    from tuner.train.trainer import make_trainer_class

    spec, overrides, clock = job.spec, job.overrides, job.clock
    settings = SpeedSettings.from_env(os.environ)  # a bad value fails the row, naming the variable
    config = config_from_dict(
        dict(
            name="bench",
            model=str(job.model_dir),
            data_path="random-tokens",  # never read: the rows below are handed to the Trainer
            method=spec.method,
            max_length=spec.sample_len or spec.seq,
            tokens_per_step=spec.seq,
            pack_to_max_length=True,
            batch_size=1,
            accumulative_counts=1,
            max_steps=len(job.rows),
            save_steps=10**9,
            logging_steps=1,
            lora_r=job.lora["r"],
            lora_alpha=job.lora["alpha"],
            lora_dropout=job.lora["dropout"],
            lora_targets=job.lora["targets"],
            lr=LR,
            max_norm=MAX_NORM,
            gradient_checkpointing=True,
        )
        | overrides["set"]
    )
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model)
    started = time.perf_counter()
    model, built = build_model(config, settings)
    load_s = time.perf_counter() - started
    trainable, _ = count_parameters(model)
    args = training_arguments(config, job.work, built, has_eval=False)
    for key, value in overrides["arg"].items():
        if not hasattr(args, key):
            raise ValueError(f"--variant arg.{key}: TrainingArguments has no such attribute")
        setattr(args, key, value)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            clock.loss((logs or {}).get("loss"))

    plan = getattr(built, "plan", None)
    trainer = make_trainer_class(plan)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(tuner_rows(spec, job.rows)),
        data_collator=training_collator(tokenizer, config, built),
        processing_class=tokenizer,
        callbacks=[EventCallback(EventLog(job.work / "events.jsonl"), RunControl()), Clock()],
    )
    trainer.remove_callback(PrinterCallback)
    try:
        with long_lived_objects_frozen():  # as tuner.train.run trains
            trainer.train()
        # TUNER_GPU_MEMORY_GIB where set; otherwise the row's own budget stands (an emulated card's, or none)
        cap = {"budget_gib": settings.gpu_memory_gib} if settings.gpu_memory_gib else {}
        return dict(
            **cap,
            load_s=load_s,
            precision=str(built.dtype).replace("torch.", ""),
            optimizer=str(getattr(args.optim, "value", args.optim)),
            attention=built.attention,
            trainable_params=trainable,
            checkpointing=checkpointing_mode(model)
            or ("graphs" if plan and plan.checkpoint_graphs else None),
            checkpointed_layers=checkpointed_layers(model, getattr(built, "layer_graphs", None)),
            offloaded_layers=offloaded_layers(model),
            speed_settings=settings.as_dict(),
            checkpoint_layers=config.checkpoint_layers,
            embedding_policy=config.embedding_on_cpu,
            plan=plan.as_dict() if plan is not None else None,
            tuner_liger=bool(getattr(built, "liger", False)),
            fused_lora=getattr(built, "fused_lora", 0),
            wide_loss_chunks=getattr(built, "wide_loss_chunks", False),
            cuda_graphs=_graphs_info(getattr(built, "layer_graphs", None)),
            embedding_on_cpu=bool(getattr(built, "embedding_on_cpu", "")),
            overrides={kind: values for kind, values in overrides.items() if values} or None,
        )
    finally:
        trainer.model = trainer.model_wrapped = trainer.optimizer = trainer.lr_scheduler = None
        del trainer, model


# ------------------------------------------------------------------------------------ hand-written loops


def plain_dtype(spec: Spec, recipe: str):
    """XTuner 0.1.9's recipe: fp16 AMP for QLoRA on Llama-2, bf16 otherwise; fp32 on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    if recipe == "fp16" or (recipe == "recipe" and spec.shape == "llama2-7b" and spec.method == "qlora"):
        return torch.float16
    return torch.bfloat16


def paged_adamw(params) -> tuple[Any, str]:
    """The baseline's optimizer, bitsandbytes' paged AdamW 32-bit (XTuner 0.1.9's recipe), which the
    peer gets too; torch's AdamW on a CPU (smoke tests)."""
    import torch

    if torch.cuda.is_available():
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=LR, weight_decay=0.0), "paged_adamw_32bit"
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0), "adamw_torch"


def train_by_hand(job: Job, model, dtype, load_s: float) -> dict:
    """The hand-written loop both peers run, with the baseline's optimizer: autocast, backward (scaled
    for fp16), clip 1.0, step, ``loss.item()`` each step. Returns the row keys every tool reports."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_name = paged_adamw(params)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    autocast = cuda and dtype != torch.float32
    skipped = 0
    job.clock.begin()
    for ids in job.rows:
        batch = torch.tensor([ids], dtype=torch.long).to(device, non_blocking=True)
        with torch.autocast(device_type=device, dtype=dtype, enabled=autocast):
            loss = model(input_ids=batch, labels=batch).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            skipped += scaler.get_scale() < scale  # an overflow: the step was skipped
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        job.clock.loss(loss.item())
        job.clock.step_end()
    result = dict(
        load_s=load_s,
        precision=str(dtype).replace("torch.", ""),
        optimizer=optimizer_name,
        attention=getattr(model.config, "_attn_implementation", None),
        trainable_params=sum(p.numel() for p in params),
    )
    if scaler is not None:
        result["amp_skipped_steps"] = int(skipped)
    del optimizer, params
    return result


def run_plain(job: Job) -> dict:
    """The baseline: a hand-written transformers + peft + bitsandbytes loop, library defaults."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    spec = job.spec
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = plain_dtype(spec, job.plain_precision)
    torch.manual_seed(0)
    started = time.perf_counter()
    kwargs = {"dtype": dtype}
    if spec.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(str(job.model_dir), **kwargs)
    if spec.method != "qlora":
        model.to(device)
    model.config.use_cache = False
    # Reentrant checkpointing: the transformers default of the recipe's era, named explicitly because
    # recent torch warns (and may come to refuse) when use_reentrant is left unsaid.
    checkpointing = {"use_reentrant": PLAIN_REENTRANT}
    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs=checkpointing
        )
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            r=job.lora["r"],
            lora_alpha=job.lora["alpha"],
            lora_dropout=job.lora["dropout"],
            target_modules=job.lora["targets"],
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    model.train()
    result = train_by_hand(job, model, dtype, time.perf_counter() - started)
    result.update(checkpointing=checkpointing_mode(model), checkpointed_layers=checkpointed_layers(model))
    del model
    return result


def run_unsloth(job: Job) -> dict:
    """The peer of issue 16: Unsloth's FastLanguageModel on the same folder, the same LoRA (r, alpha,
    dropout, the seven projections), its own gradient checkpointing ("unsloth": every layer, inputs
    offloaded to host memory), the baseline's paged AdamW 32-bit and the same token rows, through the
    same hand-written loop as the plain row. bf16 as Unsloth picks on a GPU that has it (its
    ``dtype=None``). Unsloth patches transformers and peft when imported, so this row runs in a process
    of its own and imports it first."""
    import torch
    import unsloth  # noqa: F401  (before transformers' and peft's model classes are used: it patches them)
    from unsloth import FastLanguageModel

    spec = job.spec
    if not torch.cuda.is_available():
        raise RuntimeError("the unsloth tool needs a CUDA GPU")
    torch.manual_seed(0)
    started = time.perf_counter()
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(job.model_dir),
        max_seq_length=spec.seq,
        dtype=None,
        load_in_4bit=spec.method == "qlora",
        load_in_16bit=spec.method == "lora",
        full_finetuning=False,
        use_gradient_checkpointing="unsloth",
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=job.lora["r"],
        lora_alpha=job.lora["alpha"],
        lora_dropout=job.lora["dropout"],
        target_modules=list(LORA_MODULES),
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=0,
        max_seq_length=spec.seq,
    )
    # train mode as the plain loop (and a Trainer) set it; not for_training(), which rewrites every
    # module's gradient_checkpointing flag with its own argument
    model.train()
    model.config.use_cache = False
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # Unsloth's dtype=None
    result = train_by_hand(job, model, dtype, time.perf_counter() - started)
    result["checkpointing"] = "unsloth"  # its version is in every row (measure.versions)
    del model
    return result


TOOLS: dict[str, Tool] = {
    "tuner": Tool(run_tuner, packs=True, variants=True),
    "plain": Tool(run_plain),
    # Unsloth pings the Hub for usage statistics when it loads a model; without a network that call
    # waits for its timeout, which would land in load_s (or kill the row)
    "unsloth": Tool(
        run_unsloth,
        patches_process=True,
        needs="unsloth",
        offline_env={"UNSLOTH_DISABLE_STATISTICS": "1", "HF_HUB_OFFLINE": "1"},
    ),
}
