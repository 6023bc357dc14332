"""Validation of a training config: every problem at once, with did-you-mean suggestions.

``validate()`` checks a built ``TrainConfig`` key by key (types, ranges, choices, consistency,
and optionally that files exist). It reads the schema (tuner.config.schema) and the names the data
layer knows (templates, format aliases); tuner.config.files calls it when a config is built.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from tuner.config.schema import (
    ALL_LINEAR,
    ANCHOR_ANSWERS,
    CHECKPOINT_LAYERS,
    DATA_FORMATS,
    DEEPSPEED_PRESETS,
    EMBEDDING_ON_CPU,
    HINTS,
    KNOWN_OPTIMIZERS,
    LORA_INITS,
    LORA_VARIANT_KEYS,
    LR_SCHEDULERS,
    METHODS,
    PRECISIONS,
    QUANTIZATIONS,
    TASKS,
    TRACKERS,
    TrainConfig,
    tracker_names,
)
from tuner.core.workspace import resolve_path
from tuner.data.formats import ALIASES
from tuner.data.sources import source_problem
from tuner.data.templates import list_templates

# ---------------------------------------------------------------- types


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return {float: "number", int: "int", bool: "bool (true/false)", str: "str"}.get(hint, str(hint))


def describe_value(value: Any) -> str:
    kind = {bool: "bool", int: "int", float: "number", str: "str", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )
    if value is None:
        return "null"
    shown = repr(value)
    return f"{kind} {shown[:40] + '...' if len(shown) > 40 else shown}"


def _matches(value: Any, hint: Any) -> bool:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


# The package each tracker needs: (what to pip install, the modules that provide it).
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", ("tensorboard", "tensorboardX")),
    "wandb": ("wandb", ("wandb",)),
    "mlflow": ("mlflow", ("mlflow",)),
    "trackio": ("trackio", ("trackio",)),
}

# DeepSpeed is an extra (a source build): only a config with `deepspeed` set needs it.
DEEPSPEED_INSTALL = "pip install deepspeed (or: bash scripts/install.sh --deepspeed)"


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


# ---------------------------------------------------------------- suggestions


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------- validation


def _optimizer_known(name: str) -> bool:
    if name in KNOWN_OPTIMIZERS:
        return True
    try:
        from transformers.training_args import OptimizerNames
    except ImportError:
        return False
    return name in {o.value for o in OptimizerNames}


def validate(config: TrainConfig, check_files: bool = True) -> list[str]:
    """Every problem of a config at once, as ``"key: what is wrong (what to do)"`` lines.

    Args:
        config: the config to check (built any way; wrong types are reported, not raised).
        check_files: require data_path, eval_data_path and a deepspeed .json to exist
            (relative paths resolve against the workspace).

    Returns:
        The problems; empty when the config is ready to train.

    >>> from tuner.config.schema import TrainConfig
    >>> validate(TrainConfig(data_path="a.jsonl", lr=0.0), check_files=False)
    ['lr: must be > 0 and < 1 (typical 2e-4 for LoRA, 1e-5 for full), got 0.0']
    """
    problems: list[str] = []
    values = config.to_dict()
    typed = {}
    for key, value in values.items():
        if _matches(value, HINTS[key]):
            typed[key] = value
        else:
            problems.append(f"{key}: expected {_type_name(HINTS[key])}, got {describe_value(value)}")

    def ok(key: str) -> bool:
        return key in typed

    def choice(key: str, choices: tuple[str, ...]) -> None:
        if ok(key) and typed[key] not in choices:
            value = typed[key]
            problems.append(
                f"{key}: {value!r} is not one of {', '.join(choices)}{suggest(str(value), choices)}"
            )

    def check(key: str, good: Callable[[Any], bool], message: str) -> None:
        # Only values of the right type are range-checked; null means "not set" and is fine.
        if ok(key) and typed[key] is not None and not good(typed[key]):
            problems.append(f"{key}: {message}, got {typed[key]!r}")

    # Model and method.
    check("name", lambda v: bool(v.strip()), "must not be empty")
    check("name", lambda v: not any(c in v for c in "/\\"), "must not contain / or \\")
    check("model", lambda v: bool(v.strip()), "must not be empty (use 'default')")
    if ok("template") and typed["template"] is not None:
        names = list_templates()
        if typed["template"] not in names:
            problems.append(
                f"template: unknown template {typed['template']!r}{suggest(typed['template'], names)}"
                f" (known: {', '.join(names)}; null = the tokenizer's own)"
            )
    choice("task", TASKS)
    if ok("method") and typed["method"] in LORA_VARIANT_KEYS:
        problems.append(
            f"method: {typed['method']} is a kind of LoRA: use method lora (or qlora) with "
            f"{LORA_VARIANT_KEYS[typed['method']]}"
        )
    else:
        choice("method", METHODS)
    choice("quantization", QUANTIZATIONS)
    method, quant = typed.get("method"), typed.get("quantization")
    if method == "qlora" and quant in ("none", "8bit"):
        problems.append(f"quantization: method qlora needs quantization 4bit, got {quant!r}")
    if method == "full" and quant in ("8bit", "4bit"):
        problems.append(
            f"quantization: {quant!r} with method full is refused (quantized weights cannot be "
            "trained; use method qlora or lora, or quantization none)"
        )

    # Data.
    if ok("data_path") and not typed["data_path"].strip():
        problems.append("data_path: required: the training data file, e.g. data/train.jsonl")
    aliases = ALIASES
    task, fmt = typed.get("task"), typed.get("data_format")
    if fmt is not None:
        fmt = aliases.get(fmt.strip().lower(), fmt)
        if fmt not in DATA_FORMATS:
            problems.append(
                f"data_format: {typed['data_format']!r} is not one of {', '.join(DATA_FORMATS)}"
                f"{suggest(fmt, DATA_FORMATS + tuple(aliases))}"
            )
            fmt = None  # no consistency checks on an unknown format
    if task == "pretrain" and fmt not in (None, "auto", "pretrain"):
        problems.append(f"data_format: task pretrain reads plain text (auto or pretrain), got {fmt!r}")
    if task == "sft" and fmt == "pretrain":
        problems.append("data_format: pretrain data has no conversations; set task: pretrain")
    check("test_split", lambda v: 0 <= v <= 0.5, "must be in [0, 0.5] (typical 0.1)")
    if typed.get("eval_data_path") and (typed.get("test_split") or 0) > 0:
        problems.append("test_split: set either eval_data_path or test_split, not both")
    check("max_length", lambda v: v >= 16, "must be >= 16 tokens (typical 512..4096)")
    check("tokens_per_step", lambda v: v >= 16, "must be >= 16 tokens or null")
    tps, max_length = typed.get("tokens_per_step"), typed.get("max_length")
    if tps is not None and max_length is not None and typed.get("pack_to_max_length") and tps < max_length:
        problems.append(
            f"tokens_per_step: {tps} is less than max_length {max_length}; a packed row must hold "
            "the longest sample (raise it, or null = max_length)"
        )

    # Optimisation.
    check("batch_size", lambda v: v >= 1, "must be >= 1")
    check("accumulative_counts", lambda v: v >= 1, "must be >= 1")
    check("max_steps", lambda v: v == -1 or v > 0, "must be > 0, or -1 for no limit")
    if not (typed.get("max_steps") or 0) > 0:  # max_epochs counts only without max_steps
        check("max_epochs", lambda v: v > 0, "must be > 0 (typical 1..3)")
    check("lr", lambda v: 0 < v < 1, "must be > 0 and < 1 (typical 2e-4 for LoRA, 1e-5 for full)")
    check("weight_decay", lambda v: v >= 0, "must be >= 0 (typical 0..0.1)")
    check("warmup_ratio", lambda v: 0 <= v < 1, "must be in [0, 1) (typical 0.03)")
    choice("lr_scheduler", LR_SCHEDULERS)
    check("max_norm", lambda v: v >= 0, "must be >= 0 (0 = no clipping)")
    if ok("optimizer") and not _optimizer_known(typed["optimizer"]):
        problems.append(
            f"optimizer: unknown optimizer {typed['optimizer']!r}"
            f"{suggest(typed['optimizer'], KNOWN_OPTIMIZERS)} (auto picks one)"
        )
    choice("precision", PRECISIONS)
    choice("checkpoint_layers", CHECKPOINT_LAYERS)
    choice("embedding_on_cpu", EMBEDDING_ON_CPU)

    # LoRA.
    check("lora_r", lambda v: v >= 1, "must be >= 1 (typical 8..64)")
    check("lora_alpha", lambda v: v >= 1, "must be >= 1 (typical 16..2*r)")
    check("lora_dropout", lambda v: 0 <= v < 1, "must be in [0, 1) (typical 0.05..0.1)")
    targets = typed.get("lora_targets")
    if isinstance(targets, str) and targets != ALL_LINEAR:
        problems.append(f"lora_targets: a list of module names or {ALL_LINEAR!r}, got {targets!r}")
    if isinstance(targets, list) and (not targets or not all(t.strip() for t in targets)):
        problems.append(f"lora_targets: module names must not be empty (or use {ALL_LINEAR!r})")
    choice("lora_init", LORA_INITS)
    variants = [k for k in ("use_dora", "use_rslora") if typed.get(k)]
    variants += ["lora_init: pissa"] if typed.get("lora_init") == "pissa" else []
    if method == "full" and variants:
        problems.append(f"{variants[0]}: a LoRA variant; method full trains every weight (use method lora)")
    if typed.get("lora_init") == "pissa":
        # PiSSA takes the SVD of each full-precision weight and trains from its principal part; a
        # quantized or partitioned weight has none to take.
        if quant in ("8bit", "4bit"):
            problems.append(
                f"lora_init: pissa needs a full-precision base (quantization none), got {quant!r}; "
                "use method lora, or lora_init default for qlora"
            )
        if typed.get("use_dora"):
            problems.append("lora_init: pissa with use_dora is not supported (pick one of them)")
        if typed.get("deepspeed") in ("zero3", "zero3_offload"):
            problems.append("lora_init: pissa cannot take the SVD of ZeRO-3's partitioned weights; use zero2")

    # The anchor loss compares the model with its adapter off (tuner.train.anchor).
    check("anchor_kl_weight", lambda v: math.isfinite(v) and v >= 0, "must be a number >= 0 (0 = off)")
    if (typed.get("anchor_kl_weight") or 0) > 0 and math.isfinite(typed["anchor_kl_weight"]):
        if method == "full":
            problems.append(
                "anchor_kl_weight: needs method lora or qlora (the base model is the model with its adapter "
                "off; a full fine-tune has none); set anchor_kl_weight: 0"
            )
        if typed.get("lora_init") == "pissa":
            problems.append(
                "anchor_kl_weight: lora_init pissa changes the base weights, so the adapter-off model is not "
                "the base model; use lora_init default or anchor_kl_weight: 0"
            )
        if task == "pretrain":
            problems.append(
                "anchor_kl_weight: anchors are chat conversations; task pretrain has none (set it to 0)"
            )

    choice("anchor_answers", ANCHOR_ANSWERS)
    if typed.get("anchor_answers") == "kl" and not (typed.get("anchor_kl_weight") or 0) > 0:
        problems.append("anchor_answers: kl needs anchor_kl_weight > 0 (the weight of the KL term)")

    # Evaluation.
    check("evaluation_freq", lambda v: v >= 1, "must be >= 1 step")
    check("evaluation_max_new_tokens", lambda v: v >= 1, "must be >= 1")
    check("eval_freq", lambda v: v >= 1, "must be >= 1 step or null")
    check("early_stopping_patience", lambda v: v >= 1, "must be >= 1 or null")
    has_eval = bool(typed.get("eval_data_path")) or (typed.get("test_split") or 0) > 0
    for key in ("keep_best", "early_stopping_patience"):
        if typed.get(key) and not has_eval:
            problems.append(f"{key}: needs eval data: set eval_data_path or test_split")

    # Checkpoints and logging.
    check("save_steps", lambda v: v >= 1, "must be >= 1 step")
    check("save_total_limit", lambda v: v >= 1, "must be >= 1")
    check("logging_steps", lambda v: v >= 1, "must be >= 1 step")
    check("seed", lambda v: v >= 0, "must be >= 0")
    deepspeed = typed.get("deepspeed")
    if deepspeed is not None and deepspeed not in DEEPSPEED_PRESETS and not deepspeed.endswith(".json"):
        bare = deepspeed.removeprefix("deepspeed_")  # XTuner spells it deepspeed_zero2
        hint = (
            f"; did you mean {bare!r}?"
            if bare in DEEPSPEED_PRESETS
            else suggest(deepspeed, DEEPSPEED_PRESETS)
        )
        problems.append(
            f"deepspeed: {deepspeed!r} is not one of {', '.join(DEEPSPEED_PRESETS)} or a .json file{hint}"
        )

    report_to = typed.get("report_to")
    for name in tracker_names(report_to) if isinstance(report_to, (str, list)) else []:
        if name not in TRACKERS:
            problems.append(
                f"report_to: unknown tracker {name!r}{suggest(name, TRACKERS)} (one of {', '.join(TRACKERS)})"
            )

    if check_files:
        for key in ("data_path", "eval_data_path"):
            value = typed.get(key)
            problem = source_problem(value) if value and value.strip() else None
            if problem:
                problems.append(f"{key}: {problem}")
        for name in tracker_names(report_to) if isinstance(report_to, (str, list)) else []:
            package = TRACKER_PACKAGES.get(name)
            if package and not any(importlib.util.find_spec(module) for module in package[1]):
                problems.append(f"report_to: {name} is not installed: pip install {package[0]}")
        if deepspeed and deepspeed.endswith(".json") and not resolve_path(deepspeed).is_file():
            problems.append(f"deepspeed: file not found: {resolve_path(deepspeed)}")
        if deepspeed and not deepspeed_installed():
            problems.append(
                f"deepspeed: {deepspeed} needs DeepSpeed, which is not installed: {DEEPSPEED_INSTALL}; "
                "or train without it (deepspeed: null, no --deepspeed)"
            )
    return problems
