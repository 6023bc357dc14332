from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from tuner.config.schema import ALL_LINEAR, FIELDS, HINTS, KEYS, TrainConfig, field_help
from tuner.config.validate import describe_value, suggest, validate
from tuner.core.errors import ConfigError
from tuner.core.io import atomic_open


def _accepts(hint: Any, kind: type) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    return kind in args


def _coerce(key: str, value: Any) -> Any:
    """Turn forgiving spellings into the field's type; anything else is left for validate() to report.

    >>> _coerce("lr", "2e-4")   # YAML 1.1 reads 2e-4 (no dot) as a string
    0.0002
    """
    hint = HINTS[key]
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


# Key names users bring from Hugging Face's TrainingArguments, PEFT and LLaMA-Factory -> tuner's key.
FOREIGN_KEYS = {
    "learning_rate": "lr",
    "num_train_epochs": "max_epochs",
    "num_epochs": "max_epochs",
    "epochs": "max_epochs",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "accumulative_counts",
    "lora_rank": "lora_r",
    "r": "lora_r",
    "lora_target": "lora_targets",
    "target_modules": "lora_targets",
    "cutoff_len": "max_length",
    "max_seq_length": "max_length",
    "model_name_or_path": "model",
    "dataset": "data_path",
    "train_file": "data_path",
    "eval_dataset": "eval_data_path",
    "val_size": "test_split",
    "lr_scheduler_type": "lr_scheduler",
    "max_grad_norm": "max_norm",
    "optim": "optimizer",
    "eval_steps": "eval_freq",
    "packing": "pack_to_max_length",
    "finetuning_type": "method",
    "stage": "task",
    "system_prompt": "system",
    "quantization_bit": "quantization",
    "load_in_4bit": "quantization",
    "bf16": "precision",
    "fp16": "precision",
}


def unknown_key_hint(key: str) -> str:
    """The "did you mean" for an unknown key: tuner's name for a Hugging Face / LLaMA-Factory key,
    or the closest key (of either vocabulary) to a misspelling.

    >>> unknown_key_hint("lerning_rate")
    "; did you mean 'lr' (tuner's name for learning_rate)?"
    """
    foreign = FOREIGN_KEYS.get(key)
    if foreign is None:
        close = difflib.get_close_matches(key, [*KEYS, *FOREIGN_KEYS], n=1, cutoff=0.75)
        if close and close[0] in FOREIGN_KEYS:
            key, foreign = close[0], FOREIGN_KEYS[close[0]]
    if foreign is not None:
        return f"; did you mean '{foreign}' (tuner's name for {key})?"
    return suggest(key, KEYS) or "; see docs/ARCHITECTURE.md for the keys"


def _unknown_key_problems(data: dict) -> list[str]:
    problems = []
    for key in data:
        if key not in FIELDS:
            problems.append(f"{key}: unknown key{unknown_key_hint(str(key))}")
    return problems


def _not_finite_problems(data: dict) -> list[str]:
    """Numbers that overflow (``lr: 1e999``) or are nan: said as such, not as "got str"."""
    problems = []
    for key, value in data.items():
        if key not in FIELDS or not _accepts(HINTS[key], float) or isinstance(value, bool):
            continue
        try:
            number = float(value) if isinstance(value, (str, int, float)) else None
        except (ValueError, OverflowError):
            continue
        if number is not None and not math.isfinite(number):
            problems.append(f"{key}: {value} is not a finite number; use a plain value such as 2e-4")
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
        raise ConfigError([f"expected a mapping of key: value, got {describe_value(data)}"], source)
    problems = _unknown_key_problems(data)
    not_finite = _not_finite_problems(data)
    if not_finite:  # reported once, here, not again by validate() as a wrong type
        problems += not_finite
        data = {k: v for k, v in data.items() if not any(p.startswith(f"{k}: ") for p in not_finite)}
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


# Sections of a saved file: first key of each section -> its heading.
_SECTIONS = {
    "name": "Model and method",
    "data_path": "Data",
    "batch_size": "Optimisation",
    "lora_r": "LoRA (method lora or qlora)",
    "evaluation_inputs": "Evaluation",
    "save_steps": "Checkpoints and logging",
}


# A config is a few kilobytes of plain values. These bounds stop a crafted file (a YAML "billion laughs":
# ten lines of nested aliases that expand to billions of values) before anything walks it.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000


def _too_big(data: Any, limit: int = MAX_CONFIG_VALUES) -> bool:
    """Whether ``data`` holds more than ``limit`` values once its aliases are expanded; stops counting
    at the limit, so a bomb costs ``limit`` steps, not its expansion."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file, read with the safe loader; an empty file is ``{}``.

    Raises:
        ConfigError: missing file, invalid YAML, a code tag such as ``!!python/object``, not a mapping,
            a file over 1 MiB or one that expands (through aliases) to over 100,000 values.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [f"{path.stat().st_size:,} bytes is too large for a config (at most {MAX_CONFIG_BYTES:,})"],
                str(path),
            )
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
    if _too_big(data):
        raise ConfigError(
            [
                f"expands to more than {MAX_CONFIG_VALUES:,} values (nested aliases?); a config is plain values"
            ],
            str(path),
        )
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping of key: value, got {describe_value(data)}"], str(path))
    return data


def _parse_override(key: str, text: str) -> Any:
    """Parse ``text`` as YAML so that numbers, bools, null and lists work; str fields keep raw text."""
    try:
        value = yaml.safe_load(text)
        if _too_big(value):
            raise ConfigError([f"--set {key}: the value expands to more than {MAX_CONFIG_VALUES:,} values"])
    except yaml.YAMLError:
        # YAML refuses `[Who are you?, Hi]` (a '?' in a flow list); split such a list on commas.
        if text.startswith("[") and text.endswith("]"):
            return [item.strip().strip("'\"") for item in text[1:-1].split(",") if item.strip()]
        return text
    value = _coerce(key, value) if key in FIELDS else value
    # `--set name=2024` or `--set system=yes` must stay the text the user typed.
    hint = HINTS.get(key)
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
        if key in changed:  # the last one silently winning hides a typo in a long command line
            problems.append(f"--set {key} given more than once; give each key once")
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
