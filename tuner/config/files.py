from __future__ import annotations

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


def _unknown_key_problems(data: dict) -> list[str]:
    problems = []
    for key in data:
        if key not in FIELDS:
            hint = suggest(str(key), KEYS) or "; see docs/ARCHITECTURE.md for the keys"
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
        raise ConfigError([f"expected a mapping of key: value, got {describe_value(data)}"], source)
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


# Sections of a saved file: first key of each section -> its heading.
_SECTIONS = {
    "name": "Model and method",
    "data_path": "Data",
    "batch_size": "Optimisation",
    "lora_r": "LoRA (method lora or qlora)",
    "evaluation_inputs": "Evaluation",
    "save_steps": "Checkpoints and logging",
}


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
        raise ConfigError([f"expected a mapping of key: value, got {describe_value(data)}"], str(path))
    return data


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
