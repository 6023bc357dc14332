"""The training config: one typed dataclass, YAML in and out, and a validator that reports every problem.

The validator itself lives in ``tuner/config/validate.py``; ``validate`` is re-exported here.

The keys are the contract in docs/ARCHITECTURE.md ("Training config"). Files are read with
``yaml.safe_load`` only, so a config is data and can never run code.

Typical use::

    config = load_config("presets/x.yaml", overrides=["lr=1e-4"])   # ConfigError lists all problems
    problems = validate(config, check_files=True)                   # [] when ready to train
    save_config(config, "work_dirs/x/config.yaml")
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

# Validation lives in tuner.config.validate, which imports this module only inside its functions, so
# importing it here at the top makes no cycle. validate and resolve_path are re-exported: callers
# keep importing them from tuner.config.

TASKS = ("sft", "pretrain")
METHODS = ("lora", "qlora", "full")
# How the anchors' whole answers (rows marked "anchor": true) train (tuner.data.anchors).
ANCHOR_ANSWERS = ("auto", "text", "kl", "off")
QUANTIZATIONS = ("none", "8bit", "4bit")
DATA_FORMATS = ("auto", "conversation", "alpaca", "openai", "sharegpt", "guanaco", "pretrain", "msagent")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEEPSPEED_PRESETS = ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")
# Memory policies (tuner.plan.decide applies them): which layers recompute their activations, and
# whether the frozen input embedding's table waits in host memory.
CHECKPOINT_LAYERS = ("auto", "all", "offload")
EMBEDDING_ON_CPU = ("auto", "on", "off")
# Optimizer names of transformers' TrainingArguments that users pick; others are checked against
# transformers itself (imported only then, because importing it costs seconds).
KNOWN_OPTIMIZERS = (
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_32bit",
    "paged_adamw_8bit",
    "adafactor",
    "sgd",
    "lion_32bit",
    "paged_lion_32bit",
)
ALL_LINEAR = "all-linear"
LORA_INITS = ("default", "pissa")
# LoRA variants people try as a method name; the validator points them at their keys.
LORA_VARIANT_KEYS = {"dora": "use_dora: true", "rslora": "use_rslora: true", "pissa": "lora_init: pissa"}
# Experiment trackers transformers' Trainer reports to (report_to); "none" reports nowhere.
TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "trackio")


def _f(default: Any, help: str) -> Any:
    """A dataclass field whose ``help`` (unit and typical value) is also used in saved YAML and the UI."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of one training run; field order is the order of saved YAML files."""

    # --- model and method
    name: str = _f("run", "run name; run folder work_dirs/<name>/<timestamp> (defaults to the file name)")
    model: str = _f("default", "local folder, hub id, or 'default' (embedded SmolLM2-135M-Instruct)")
    template: str | None = _f(None, "chat template name; null = the tokenizer's own chat template")
    trust_remote_code: bool = _f(False, "run the model repository's own Python code (InternLM needs it)")
    task: str = _f("sft", "sft (chat fine-tuning) or pretrain (incremental pretraining on text)")
    method: str = _f("lora", "lora, qlora (LoRA on a 4-bit base) or full")
    quantization: str = _f("none", "base weights: none, 8bit or 4bit (bitsandbytes, CUDA only)")
    # --- data
    data_path: str = _f("", "training data file, relative to the workspace")
    data_format: str = _f("auto", "auto, conversation, alpaca, openai, sharegpt, guanaco, pretrain, msagent")
    eval_data_path: str | None = _f(None, "evaluation data file; null = none")
    test_split: float = _f(0.0, "fraction of data_path held out for eval loss (0..0.5); typical 0.1")
    system: str | None = _f(None, "system prompt for samples without one and for evaluation_inputs")
    max_length: int = _f(2048, "tokens per sample; longer samples are truncated; typical 512..4096")
    pack_to_max_length: bool = _f(True, "pack short samples into rows of tokens_per_step tokens")
    tokens_per_step: int | None = _f(
        None,
        "tokens in one packed row; null = max_length; on a GPU with room, 16384 trains short samples fastest (docs/performance.md)",
    )
    # --- optimisation
    batch_size: int = _f(1, "rows per device per micro-step; typical 1..8")
    accumulative_counts: int = _f(16, "gradient accumulation micro-steps per optimizer step; typical 1..16")
    max_epochs: float = _f(3.0, "passes over the training data; typical 1..3")
    max_steps: int = _f(-1, "optimizer steps; > 0 overrides max_epochs, -1 = no limit")
    lr: float = _f(2e-4, "peak learning rate; typical 2e-4 for LoRA, 1e-5 for full")
    weight_decay: float = _f(0.0, "AdamW weight decay; typical 0..0.1")
    warmup_ratio: float = _f(0.03, "fraction of steps spent warming the learning rate up; typical 0.03")
    lr_scheduler: str = _f("cosine", "cosine, linear, constant or constant_with_warmup")
    max_norm: float = _f(1.0, "gradient clipping norm; 0 = no clipping")
    optimizer: str = _f(
        "auto",
        "auto = adamw_torch_fused on a GPU (paged_adamw_32bit for qlora whose optimizer state does not fit the card beside the rest, or under deepspeed), adamw_torch on a CPU",
    )
    precision: str = _f("auto", "auto, bf16, fp16 or fp32; auto = bf16 where supported, fp32 on CPU")
    gradient_checkpointing: bool = _f(
        True,
        "recompute activations where GPU memory needs it (only as many layers as needed): less memory, slower",
    )
    checkpoint_layers: str = _f(
        "auto",
        "with gradient_checkpointing: auto = only as many layers as GPU memory needs (their inputs in host "
        "memory when even every layer does not fit; one CUDA process without DeepSpeed, else every layer); "
        "all = every layer; offload = every layer, inputs in host memory",
    )
    embedding_on_cpu: str = _f(
        "auto",
        "the frozen input embedding's table in host memory (LoRA, one CUDA process, no DeepSpeed, an "
        "untied embedding): auto = when every layer is checkpointed (memory is tight); on; off",
    )
    # --- LoRA (lora and qlora)
    lora_r: int = _f(64, "LoRA rank; typical 8..64")
    lora_alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r); typical 16..2*r")
    lora_dropout: float = _f(0.1, "dropout on the LoRA input; 0 <= p < 1, typical 0.05..0.1")
    lora_targets: list[str] | str = _f(ALL_LINEAR, "module names to adapt, or 'all-linear'")
    use_dora: bool = _f(
        False,
        "DoRA: LoRA on the direction, a trained magnitude per output; can beat LoRA at low rank; slower "
        "(tuner's fused LoRA path does not apply)",
    )
    use_rslora: bool = _f(
        False, "rsLoRA: scale = alpha / sqrt(r) instead of alpha / r (steadier at high rank)"
    )
    lora_init: str = _f(
        "default",
        "default (B = 0) or pissa (start from the weights' principal components; full-precision base only; "
        "the saved adapter is converted to plain LoRA of rank 2r)",
    )
    anchor_kl_weight: float = _f(
        0.0,
        "weight of the KL term that keeps the model's next-token distribution on anchor conversations "
        '(marked "anchor": true: the base model\'s own answers, as make-identity writes) at the base '
        "model's; they then get no cross-entropy; 0 = off (anchors train as ordinary conversations); LoRA only",
    )
    anchor_answers: str = _f(
        "auto",
        'how anchor conversations (marked "anchor": true) train: text (cross-entropy, as ordinary '
        "conversations), kl (through the KL term), off (left out: the KL probes alone hold the base "
        'model); auto = kl with anchor_kl_weight > 0, else text. KL probes ("anchor": "kl") always '
        "train through the KL term",
    )
    # --- evaluation
    evaluation_inputs: list[str] = _f([], "questions the model answers every evaluation_freq steps")
    evaluation_freq: int = _f(500, "optimizer steps between evaluation_inputs answers")
    evaluation_max_new_tokens: int = _f(128, "tokens generated per evaluation answer")
    eval_freq: int | None = _f(None, "steps between eval-loss runs; null = once per epoch with eval data")
    keep_best: bool = _f(False, "keep the checkpoint with the lowest eval loss as the final adapter")
    early_stopping_patience: int | None = _f(None, "evals without improvement before stopping; null = never")
    # --- checkpoints and logging
    save_steps: int = _f(500, "optimizer steps between checkpoints")
    save_total_limit: int = _f(2, "checkpoints kept on disk")
    logging_steps: int = _f(1, "optimizer steps between log lines")
    report_to: list[str] | str = _f(
        "none", "experiment tracking: none, or tensorboard, wandb, mlflow, trackio (several: a list or a, b)"
    )
    seed: int = _f(0, "random seed for shuffling, splitting and LoRA init")
    deepspeed: str | None = _f(None, "zero1, zero2, zero2_offload, zero3, zero3_offload or a .json file")
    output_dir: str | None = _f(None, "run folder; null = work_dirs/<name>/<timestamp>")

    def __post_init__(self):
        # The table's default: "none", except that qlora implies a 4-bit base.
        if self.method == "qlora" and self.quantization == "none":
            self.quantization = "4bit"

    def to_dict(self) -> dict[str, Any]:
        """All keys in field order, as plain YAML-ready values (lists copied)."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
KEYS = list(FIELDS)
HINTS = typing.get_type_hints(TrainConfig)


def field_help(key: str) -> str:
    """The one-line help of a key (unit and typical value), e.g. for a UI tooltip."""
    return FIELDS[key].metadata.get("help", "")


# ---------------------------------------------------------------- types


# ---------------------------------------------------------------- building


# ---------------------------------------------------------------- overrides


# ---------------------------------------------------------------- saving


def tracker_names(report_to: list[str] | str | None) -> list[str]:
    """report_to as a list of tracker names, "none" dropped.

    >>> tracker_names("tensorboard, wandb"), tracker_names("none")
    (['tensorboard', 'wandb'], [])
    """
    items = report_to.split(",") if isinstance(report_to, str) else list(report_to or [])
    return [name.strip().lower() for name in items if str(name).strip() and name.strip().lower() != "none"]


def method_bits(config) -> int | None:
    return {"4bit": 4, "8bit": 8}.get(config.quantization) or (4 if config.method == "qlora" else None)
