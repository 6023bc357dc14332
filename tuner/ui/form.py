"""The config form: one typed control per TrainConfig key, shared by the Presets and Train tabs.

Numbers get sliders or number boxes, choices get dropdowns, lists get one-item-per-line boxes.
Optional numbers (``tokens_per_step``, ``eval_freq``, ``early_stopping_patience``) use 0 for null,
which the label says.
"""

from __future__ import annotations

from tuner.config.files import config_from_dict
from tuner.config.schema import (
    ANCHOR_ANSWERS,
    CHECKPOINT_LAYERS,
    DATA_FORMATS,
    DEEPSPEED_PRESETS,
    EMBEDDING_ON_CPU,
    KEYS,
    LORA_INITS,
    LR_SCHEDULERS,
    METHODS,
    PRECISIONS,
    QUANTIZATIONS,
    TASKS,
    TrainConfig,
    field_help,
)

OWN_TEMPLATE = "(model's own)"
NO_DEEPSPEED = "(none)"
OPTIONAL_ZERO = {"tokens_per_step", "eval_freq", "early_stopping_patience"}
OPTIONAL_TEXT = {"eval_data_path", "system", "output_dir"}

# key -> (widget, options). Order follows TrainConfig; groups are the accordions of the form.
SPEC: dict[str, tuple[str, dict]] = {
    "name": ("text", {}),
    "model": ("combo", {"choices": ["default"]}),
    "template": ("combo", {"choices": [OWN_TEMPLATE]}),
    "trust_remote_code": ("check", {}),
    "task": ("choice", {"choices": list(TASKS)}),
    "method": ("choice", {"choices": list(METHODS)}),
    "quantization": ("choice", {"choices": list(QUANTIZATIONS)}),
    "data_path": ("combo", {"choices": []}),
    "data_format": ("choice", {"choices": list(DATA_FORMATS)}),
    "eval_data_path": ("combo", {"choices": []}),
    "test_split": ("slider", {"minimum": 0.0, "maximum": 0.5, "step": 0.01}),
    "system": ("lines", {"lines": 2}),
    "max_length": ("slider", {"minimum": 64, "maximum": 32768, "step": 64}),
    "pack_to_max_length": ("check", {}),
    "tokens_per_step": ("number", {"precision": 0, "minimum": 0}),
    "batch_size": ("slider", {"minimum": 1, "maximum": 64, "step": 1}),
    "accumulative_counts": ("slider", {"minimum": 1, "maximum": 128, "step": 1}),
    "max_epochs": ("number", {"minimum": 0}),
    "max_steps": ("number", {"precision": 0, "minimum": -1}),
    "lr": ("number", {"minimum": 0}),
    "weight_decay": ("number", {"minimum": 0}),
    "warmup_ratio": ("slider", {"minimum": 0.0, "maximum": 0.5, "step": 0.01}),
    "lr_scheduler": ("choice", {"choices": list(LR_SCHEDULERS)}),
    "max_norm": ("number", {"minimum": 0}),
    "optimizer": ("combo", {"choices": ["auto", "adamw_torch", "paged_adamw_32bit", "adamw_8bit"]}),
    "precision": ("choice", {"choices": list(PRECISIONS)}),
    "gradient_checkpointing": ("check", {}),
    "checkpoint_layers": ("choice", {"choices": list(CHECKPOINT_LAYERS)}),
    "embedding_on_cpu": ("choice", {"choices": list(EMBEDDING_ON_CPU)}),
    "lora_r": ("slider", {"minimum": 1, "maximum": 256, "step": 1}),
    "lora_alpha": ("slider", {"minimum": 1, "maximum": 512, "step": 1}),
    "lora_dropout": ("slider", {"minimum": 0.0, "maximum": 0.5, "step": 0.01}),
    "lora_targets": ("text", {}),
    "use_dora": ("check", {}),
    "use_rslora": ("check", {}),
    "lora_init": ("choice", {"choices": list(LORA_INITS)}),
    "anchor_kl_weight": ("number", {"minimum": 0}),
    "anchor_answers": ("choice", {"choices": list(ANCHOR_ANSWERS)}),
    "evaluation_inputs": ("lines", {"lines": 3}),
    "evaluation_freq": ("number", {"precision": 0, "minimum": 1}),
    "evaluation_max_new_tokens": ("slider", {"minimum": 8, "maximum": 1024, "step": 8}),
    "eval_freq": ("number", {"precision": 0, "minimum": 0}),
    "keep_best": ("check", {}),
    "early_stopping_patience": ("number", {"precision": 0, "minimum": 0}),
    "save_steps": ("number", {"precision": 0, "minimum": 1}),
    "save_total_limit": ("slider", {"minimum": 1, "maximum": 20, "step": 1}),
    "logging_steps": ("number", {"precision": 0, "minimum": 1}),
    "report_to": ("text", {}),
    "seed": ("number", {"precision": 0, "minimum": 0}),
    "deepspeed": ("combo", {"choices": [NO_DEEPSPEED, *DEEPSPEED_PRESETS]}),
    "output_dir": ("text", {}),
}
assert list(SPEC) == KEYS, "form and TrainConfig keys differ"  # noqa: S101 - a programming error

GROUPS = {
    "form.group.model": ["name", "model", "template", "trust_remote_code", "task", "method", "quantization"],
    "form.group.data": [
        "data_path",
        "data_format",
        "eval_data_path",
        "test_split",
        "system",
        "max_length",
        "pack_to_max_length",
        "tokens_per_step",
    ],
    "form.group.optim": [
        "batch_size",
        "accumulative_counts",
        "max_epochs",
        "max_steps",
        "lr",
        "weight_decay",
        "warmup_ratio",
        "lr_scheduler",
        "max_norm",
        "optimizer",
        "precision",
        "gradient_checkpointing",
        "checkpoint_layers",
        "embedding_on_cpu",
    ],
    "form.group.lora": [
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "use_dora",
        "use_rslora",
        "lora_init",
        "anchor_kl_weight",
        "anchor_answers",
    ],
    "form.group.eval": [
        "evaluation_inputs",
        "evaluation_freq",
        "evaluation_max_new_tokens",
        "eval_freq",
        "keep_best",
        "early_stopping_patience",
    ],
    "form.group.save": [
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "report_to",
        "seed",
        "deepspeed",
        "output_dir",
    ],
}
OPEN_GROUPS = {"form.group.model", "form.group.data", "form.group.optim", "form.group.eval"}


def to_form(config: TrainConfig | dict) -> list:
    """Config -> widget values, in KEYS order."""
    data = config.to_dict() if isinstance(config, TrainConfig) else {**TrainConfig().to_dict(), **config}
    values = []
    for key in KEYS:
        value = data.get(key)
        kind = SPEC[key][0]
        if key == "template" and not value:
            value = OWN_TEMPLATE
        elif key == "deepspeed" and not value:
            value = NO_DEEPSPEED
        elif key in OPTIONAL_ZERO and value is None:
            value = 0
        elif key in ("lora_targets", "report_to") and isinstance(value, list):
            value = ", ".join(value)
        elif key == "evaluation_inputs":
            value = "\n".join(value or [])
        elif kind in ("text", "lines", "combo") and value is None:
            value = ""
        values.append(value)
    return values


def from_form(values) -> dict:
    """Widget values (KEYS order) -> a config dict for ``config_from_dict`` (nothing validated here)."""
    data = {}
    for key, value in zip(KEYS, values, strict=True):
        if key == "template":
            value = None if value in (None, "", OWN_TEMPLATE) else value
        elif key == "deepspeed":
            value = None if value in (None, "", NO_DEEPSPEED) else value
        elif key in OPTIONAL_ZERO:
            value = None if value in (None, "", 0) else int(value)
        elif key == "evaluation_inputs":
            value = [line.strip() for line in (value or "").splitlines() if line.strip()]
        elif key in OPTIONAL_TEXT:
            value = value.strip() if isinstance(value, str) and value.strip() else None
        elif _integral(key) and isinstance(value, float) and value.is_integer():
            value = int(value)  # number boxes and sliders hand back 16.0 for an int field
        data[key] = value
    return data


def _integral(key: str) -> bool:
    kind, opts = SPEC[key]
    return (kind == "number" and opts.get("precision") == 0) or (
        kind == "slider" and opts.get("step", 0) >= 1
    )


def build_form(T) -> dict:
    """Create the form's components (inside the current Blocks context); returns key -> component."""
    import gradio as gr

    defaults = dict(zip(KEYS, to_form(TrainConfig()), strict=True))
    comps = {}
    for group, keys in GROUPS.items():
        with T.make(gr.Accordion, group, open=group in OPEN_GROUPS), gr.Row(equal_height=False):
            for key in keys:
                comps[key] = _widget(T, key, defaults[key])
    return comps


def _widget(T, key: str, value):
    import gradio as gr

    kind, opts = SPEC[key]
    label_key = f"cfg.{key}"
    info = field_help(key)
    common = {"value": value, "info": info, "min_width": 200, "elem_id": f"cfg-{key}"}
    if kind == "text":
        return T.make(gr.Textbox, label_key, **common)
    if kind == "lines":
        return T.make(gr.Textbox, label_key, lines=opts["lines"], **common)
    if kind == "check":
        return T.make(gr.Checkbox, label_key, **common)
    if kind == "choice":
        return T.make(gr.Dropdown, label_key, choices=opts["choices"], **common)
    if kind == "combo":
        choices = list(opts["choices"])
        if value and value not in choices:
            choices.append(value)
        return T.make(gr.Dropdown, label_key, choices=choices, allow_custom_value=True, **common)
    if kind == "slider":
        return T.make(gr.Slider, label_key, **opts, **common)
    return T.make(gr.Number, label_key, **opts, **common)


def form_config(values, check_files: bool = False) -> TrainConfig:
    """The form's values as a validated TrainConfig (ConfigError lists every problem)."""
    return config_from_dict(from_form(values), "form", check_files=check_files)
