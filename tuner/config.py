"""The training config: one typed dataclass, YAML in and out, and a validator that reports every problem.

The validator itself lives in ``tuner/config_check.py``; ``validate`` is re-exported here.

The keys are the contract in docs/ARCHITECTURE.md ("Training config"). Files are read with
``yaml.safe_load`` only, so a config is data and can never run code.

Typical use::

    config = load_config("presets/x.yaml", overrides=["lr=1e-4"])   # ConfigError lists all problems
    problems = validate(config, check_files=True)                   # [] when ready to train
    save_config(config, "work_dirs/x/config.yaml")
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

# Validation lives in tuner.config_check, which imports this module only inside its functions, so
# importing it here at the top makes no cycle. validate and resolve_path are re-exported: callers
# keep importing them from tuner.config.
from tuner.config_check import _suggest, _value_name, resolve_path, validate  # noqa: F401
from tuner.errors import ConfigError
from tuner.io import atomic_open

TASKS = ("sft", "pretrain")
METHODS = ("lora", "qlora", "full")
QUANTIZATIONS = ("none", "8bit", "4bit")
DATA_FORMATS = ("auto", "conversation", "alpaca", "openai", "sharegpt", "guanaco", "pretrain", "msagent")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEEPSPEED_PRESETS = ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")
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
        "tokens in one packed row; null = max_length; on a GPU with room, 16384 trains short samples fastest (docs/benchmarks.md)",
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
        "auto = adamw_torch_fused on a GPU (paged_adamw_32bit for qlora when memory is tight or under deepspeed), adamw_torch on a CPU",
    )
    precision: str = _f("auto", "auto, bf16, fp16 or fp32; auto = bf16 where supported, fp32 on CPU")
    gradient_checkpointing: bool = _f(
        True,
        "recompute activations where GPU memory needs it (only as many layers as needed): less memory, slower",
    )
    # --- LoRA (lora and qlora)
    lora_r: int = _f(64, "LoRA rank; typical 8..64")
    lora_alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r); typical 16..2*r")
    lora_dropout: float = _f(0.1, "dropout on the LoRA input; 0 <= p < 1, typical 0.05..0.1")
    lora_targets: list[str] | str = _f(ALL_LINEAR, "module names to adapt, or 'all-linear'")
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
_HINTS = typing.get_type_hints(TrainConfig)
# Sections of a saved file: first key of each section -> its heading.
_SECTIONS = {
    "name": "Model and method",
    "data_path": "Data",
    "batch_size": "Optimisation",
    "lora_r": "LoRA (method lora or qlora)",
    "evaluation_inputs": "Evaluation",
    "save_steps": "Checkpoints and logging",
}


def field_help(key: str) -> str:
    """The one-line help of a key (unit and typical value), e.g. for a UI tooltip."""
    return FIELDS[key].metadata.get("help", "")


# ---------------------------------------------------------------- types


def _accepts(hint: Any, kind: type) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    return kind in args


def _coerce(key: str, value: Any) -> Any:
    """Turn forgiving spellings into the field's type; anything else is left for validate() to report.

    >>> _coerce("lr", "2e-4")   # YAML 1.1 reads 2e-4 (no dot) as a string
    0.0002
    """
    hint = _HINTS[key]
    if _accepts(hint, float) and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    if _accepts(hint, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # Number widgets and hand-written YAML give 50.0 for an int.
    if _accepts(hint, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if key == "evaluation_inputs" and isinstance(value, str):
        return [value]
    if key == "lora_targets" and isinstance(value, str) and value != ALL_LINEAR:
        return [part.strip() for part in value.split(",") if part.strip()]
    if key == "quantization" and value is None:
        return "none"
    return value


# ---------------------------------------------------------------- building


def _unknown_key_problems(data: dict) -> list[str]:
    problems = []
    for key in data:
        if key not in FIELDS:
            hint = _suggest(str(key), KEYS) or "; see docs/ARCHITECTURE.md for the keys"
            problems.append(f"{key}: unknown key{hint}")
    return problems


def config_from_dict(
    data: dict, source: str | Path | None = None, *, check_files: bool = False
) -> TrainConfig:
    """Build and validate a config from a mapping (a loaded YAML file, or the app's form).

    Args:
        data: key -> value; missing keys take their defaults.
        source: where the data came from, named in the error.
        check_files: also require data files and a deepspeed .json to exist.

    Returns:
        The config.

    Raises:
        ConfigError: listing every problem (unknown keys, types, ranges, inconsistencies).

    >>> config_from_dict({"data_path": "a.jsonl", "method": "qlora"}).quantization
    '4bit'
    """
    source = str(source) if source is not None else None
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping of key: value, got {_value_name(data)}"], source)
    problems = _unknown_key_problems(data)
    known = {key: _coerce(key, value) for key, value in data.items() if key in FIELDS}
    if known.get("method") == "qlora" and known.get("quantization") == "none":
        problems.append("quantization: method qlora needs quantization 4bit (use method lora for none)")
    config = TrainConfig(**known)
    problems += validate(config, check_files=check_files)
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(
    path: str | Path, *, overrides: list[str] | None = None, check_files: bool = False
) -> TrainConfig:
    """Read a YAML config safely (never executes anything); ``name`` defaults to the file stem.

    Args:
        path: the .yaml file.
        overrides: ``["key=value", ...]`` applied before validation (the ``--set`` option).
        check_files: also require the data files to exist (see validate()).

    Raises:
        ConfigError: the file is missing or not valid YAML, or has problems (all listed).
    """
    path = Path(path)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(data, path, check_files=check_files)


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file, read with the safe loader; an empty file is ``{}``.

    Raises:
        ConfigError: missing file, invalid YAML, a code tag such as ``!!python/object``, not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(["no such file"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        mark = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        raise ConfigError(
            [f"{mark}refused: {exc.problem} (a config is plain data; tags that run code are not allowed)"],
            str(path),
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}invalid YAML: {problem}"], str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping of key: value, got {_value_name(data)}"], str(path))
    return data


# ---------------------------------------------------------------- overrides


def _parse_override(key: str, text: str) -> Any:
    """Parse ``text`` as YAML so that numbers, bools, null and lists work; str fields keep raw text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        # YAML refuses `[Who are you?, Hi]` (a '?' in a flow list); split such a list on commas.
        if text.startswith("[") and text.endswith("]"):
            return [item.strip().strip("'\"") for item in text[1:-1].split(",") if item.strip()]
        return text
    value = _coerce(key, value) if key in FIELDS else value
    # `--set name=2024` or `--set system=yes` must stay the text the user typed.
    hint = _HINTS.get(key)
    keeps_text = (
        hint is not None and _accepts(hint, str) and not (key == "lora_targets" and isinstance(value, list))
    )
    if keeps_text and value is not None and not isinstance(value, str):
        return text
    return value


def apply_overrides(config_or_dict: TrainConfig | dict, overrides: list[str]) -> TrainConfig | dict:
    """Apply ``["key=value", ...]`` (the ``--set`` option); returns a new object of the same kind.

    Values are parsed with ``yaml.safe_load``: ``lr=1e-4`` -> 0.0001, ``keep_best=true`` -> True,
    ``evaluation_inputs=[Hi, Who are you?]`` -> a list, ``template=null`` -> None.
    Changing ``method`` without setting ``quantization`` moves quantization to the new method's
    default (qlora -> 4bit, otherwise none), so ``method=lora`` on a qlora preset means LoRA.

    Raises:
        ConfigError: malformed items, or (for a TrainConfig) any problem of the result, unknown
            keys included; for a dict, unknown keys are kept for config_from_dict to report.

    >>> apply_overrides({"lr": 2e-4}, ["lr=1e-4", "keep_best=true"])
    {'lr': 0.0001, 'keep_best': True}
    """
    is_config = isinstance(config_or_dict, TrainConfig)
    data = config_or_dict.to_dict() if is_config else dict(config_or_dict)
    problems = []
    changed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected key=value, e.g. lr=1e-4")
            continue
        # An unknown key is kept: config_from_dict reports it (with a did-you-mean) among the rest.
        changed[key] = _parse_override(key, text.strip())
    if problems:
        raise ConfigError(problems, "--set")
    if "method" in changed and "quantization" not in changed:
        old_default = "4bit" if data.get("method") == "qlora" else "none"
        if data.get("quantization", "none") == old_default:
            data.pop("quantization", None)  # the new method's default applies
    data.update(changed)
    if is_config:
        return config_from_dict(data, "--set")
    return data


# ---------------------------------------------------------------- saving


def _comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.strip("\n").splitlines())


def dump_config(config: TrainConfig, header: str | None = None, *, skip: tuple[str, ...] = ()) -> str:
    """The YAML text of a config: optional header comment, then every key in sections with its help.

    Args:
        config: the config.
        header: text written as ``# `` comment lines at the top.
        skip: keys left out (a preset leaves out ``name``: its file name is its name).
    """
    parts = [_comment(header)] if header else []
    for key, value in config.to_dict().items():
        if key in _SECTIONS:
            parts.append(("\n" if parts else "") + f"# --- {_SECTIONS[key]}\n")
        if key in skip:
            continue
        # A huge width keeps long strings (system prompts) on one line, so the help fits after them.
        text = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True, width=1_000_000)
        if text.count("\n") == 1:
            text = f"{text.rstrip()}  # {field_help(key)}\n"
        else:
            text = f"# {field_help(key)}\n{text}"
        parts.append(text)
    return "".join(parts)


def save_config(
    config: TrainConfig, path: str | Path, force: bool = False, *, header: str | None = None
) -> Path:
    """Write a config as YAML atomically; ``load_config(path)`` gives an equal config back.

    Raises:
        OutputExistsError: ``path`` exists and ``force`` is False.
    """
    path = Path(path)
    with atomic_open(path, "w", force=force) as handle:
        handle.write(dump_config(config, header))
    return path
