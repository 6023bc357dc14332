"""Presets tab: list and filter presets, load one into the typed form, validate, estimate, save, CLI.

The form (tuner/ui/form.py) is the settings the Train tab starts with.
"""

from __future__ import annotations

import shlex

import yaml

from tuner.config.files import config_from_dict, read_yaml
from tuner.config.schema import KEYS, TrainConfig
from tuner.core import system
from tuner.core.errors import ConfigError, TunerError
from tuner.models import shape as model_shapes
from tuner.ui import form
from tuner.ui.common import guard, rel
from tuner.ui.form import form_config
from tuner.ui.i18n import tr

PRESET_COLUMNS = [
    "name",
    "source",
    "model",
    "method",
    "task",
    "dataset",
    "max_length",
    "epochs",
    "gpu_memory",
]


# ------------------------------------------------------------------------------------- handlers


def list_presets(pattern: str = ""):
    """Presets matching ``pattern``: (dropdown update, table)."""
    import gradio as gr
    import pandas as pd

    from tuner.config import presets

    found = presets.list_presets((pattern or "").strip() or None)
    rows = [{k: getattr(p, k) for k in PRESET_COLUMNS} for p in found]
    names = [p.name for p in found]
    # The presets of the embedded model train on any machine: the natural first pick.
    first = next((p.name for p in found if p.model == "default"), names[0] if names else None)
    return gr.update(choices=names, value=first), pd.DataFrame(rows, columns=PRESET_COLUMNS)


def load_preset(name: str, lang: str = "en"):
    """Fill the form from a preset; returns [*form values, description, cli command, status]."""
    from tuner.config import presets

    if not name:
        raise TunerError(tr(lang, "presets.pick_first"))
    path = presets.find_preset(name)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    config = config_from_dict(data, rel(path))
    info = next((p for p in presets.list_presets(name) if p.name == name), None)
    description = info.description if info else ""
    values = form.to_form(config)
    return [*values, description, cli_command(name, *values), tr(lang, "presets.loaded", name=name)]


def validate_form(*values_and_lang):
    """All problems of the form at once, or OK."""
    *values, lang = values_and_lang
    try:
        form_config(values, check_files=True)
    except ConfigError as exc:
        raise TunerError(
            tr(lang, "presets.problems", n=len(exc.problems))
            + "\n"
            + "\n".join(f"- {p}" for p in exc.problems)
        ) from None
    return tr(lang, "presets.valid")


def save_preset(new_name: str, overwrite: bool, *values_and_lang):
    """Save the form as ``<workspace>/presets/<new_name>.yaml``; returns (status, preset choices)."""
    import gradio as gr

    from tuner.config import presets

    *values, lang = values_and_lang
    new_name = (new_name or "").strip()
    if not new_name or "/" in new_name or "\\" in new_name:
        raise TunerError(tr(lang, "presets.bad_name"))
    config = form_config(values)
    config.name = new_name
    path = presets.save_preset(config, new_name, force=bool(overwrite))
    names = [p.name for p in presets.list_presets()]
    return tr(lang, "presets.saved", path=rel(path)), gr.update(choices=names, value=new_name)


def _preset_names() -> list[str]:
    from tuner.config import presets

    try:
        return [p.name for p in presets.list_presets()]
    except TunerError:
        return []


def cli_command(preset: str | None, *values) -> str:
    """``python -m tuner train PRESET --set key=value ...`` for the keys the form changed."""
    from tuner.config import presets

    data = form.from_form(values)
    base: dict = {}
    if preset:
        try:
            path = presets.find_preset(preset)
            base = config_from_dict({**read_yaml(path), "name": path.stem}).to_dict()
        except TunerError:
            preset = None
    if not preset:
        base = TrainConfig().to_dict()
    parts = ["python", "-m", "tuner", "train", preset or "CONFIG.yaml"]
    for key in KEYS:
        if key in data and data[key] != base.get(key):
            text = yaml.safe_dump(
                data[key], default_flow_style=True, allow_unicode=True, width=10_000
            ).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            parts += ["--set", f"{key}={text}"]
    return " ".join(shlex.quote(p) for p in parts)


def estimate_form(*values_and_lang):
    """Memory and time estimate of the form's settings with a fits / won't fit verdict (markdown)."""
    from tuner.plan.estimate import estimate, format_duration

    *values, lang = values_and_lang
    data = form.from_form(values)
    est = estimate(data, dataset_tokens=_dataset_tokens(data.get("data_path")))
    verdict = tr(lang, "est.fits") if est.fits else tr(lang, "est.nofit")
    activations = tr(lang, "est.activations")
    if est.checkpointed_layers:
        key = "est.activations_offload" if est.offloaded else "est.activations_ckpt"
        activations = tr(lang, key, n=est.checkpointed_layers, layers=est.layers)
    elif est.graphs:
        activations = tr(lang, "est.activations_graphs")
    lines = [
        f"### {verdict}",
        tr(lang, "est.total", total=f"{est.total_gib:.1f}", avail=f"{est.available_gib:.1f}"),
        "",
        tr(lang, "est.plan", plan=est.plan),
        "",
        "| | GiB |",
        "| --- | --- |",
        f"| {tr(lang, 'est.weights_embedding_host' if est.embedding_on_cpu else 'est.weights')} | {est.weights_gib:.2f} |",
        f"| {tr(lang, 'est.trainable', n=f'{est.trainable_params:,}')} | {est.trainable_gib:.2f} |",
        f"| {activations} | {est.activations_gib:.2f} |",
        f"| {tr(lang, 'est.logits')} | {est.logits_gib:.2f} |",
        f"| {tr(lang, 'est.overhead')} | {est.overhead_gib:.2f} |",
        "",
        tr(
            lang,
            "est.time",
            tokens=f"{est.tokens_per_step:,}",
            sec=format_duration(est.seconds_per_step),
            rate=f"{est.tokens_per_second:,.0f}",
        ),
    ]
    if est.total_seconds:
        lines.append(
            tr(lang, "est.total_time", steps=est.total_steps, time=format_duration(est.total_seconds))
        )
    lines += _longest_sample_lines(data, lang)
    if est.advice:
        lines.append("\n**" + tr(lang, "est.advice") + "**")
        lines += [f"- {tip}" for tip in est.advice]
    lines.append("\n" + tr(lang, "est.rough"))
    return "\n".join(lines)


def _longest_sample_lines(data: dict, lang: str) -> list[str]:
    """On a GPU: the longest single sample these settings fit (tuner.plan.long_rows.longest_sample_report),
    with the model's own context where the rows go past it and the allocator tip where it applies."""
    from tuner.plan.long_rows import longest_sample_report

    hw = system.hardware()
    if hw.device != "cuda":
        return []
    report = longest_sample_report(data, model_shapes.model_shape(data.get("model") or "default"), hw)
    if not report.tokens:
        return []
    text = tr(lang, "est.longest", tokens=f"{report.tokens:,}")
    if report.past_model_context:
        text += " " + tr(lang, "est.longest_context", context=f"{report.past_model_context:,}")
    return ["", text] + ([tr(lang, "est.longest_tip")] if report.allocator_tip else [])


def _dataset_tokens(data_path: str | None) -> int | None:
    """The training data's tokens for a time estimate (tuner.plan.estimate.dataset_tokens), the path
    resolved in the workspace as the form's other paths."""
    from tuner.plan.estimate import dataset_tokens
    from tuner.ui.common import ws_path

    if not data_path:
        return None
    try:
        return dataset_tokens(ws_path(data_path))
    except TunerError:
        return None


def environment_markdown(lang: str = "en") -> str:
    """The environment panel: torch, CUDA, GPU, memory, optional accelerators."""
    from tuner.core.system import environment

    env = environment()
    missing = tr(lang, "env.missing")
    rows = [
        ("torch", env["torch"] or missing),
        ("CUDA", env["cuda"] or tr(lang, "env.no_cuda")),
        ("GPU", env["gpu"] or "-"),
        (
            tr(lang, "env.memory", kind="VRAM" if env["device"] == "cuda" else "RAM"),
            f"{env['memory_gib']} GiB" + (f" ({tr(lang, 'env.capped')})" if env.get("memory_capped") else ""),
        ),
        ("CPU", str(env["cpu_count"])),
    ]
    rows += [
        (pkg, env[pkg] or missing)
        for pkg in ("transformers", "peft", "bitsandbytes", "flash_attn", "deepspeed")
    ]
    return "| | |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


# ------------------------------------------------------------------------------------- layout


def build(T, lang_state):
    """Create the Presets tab; returns its components, including the form (key -> component)."""
    import gradio as gr

    c = {}
    with T.make(gr.Tab, "tab.presets", id="presets"):
        with gr.Row():
            c["filter"] = T.make(gr.Textbox, "presets.filter", scale=2)
            c["preset"] = T.make(
                gr.Dropdown, "presets.preset", choices=_preset_names(), allow_custom_value=True, scale=3
            )
            c["load"] = T.value(gr.Button, "presets.load", variant="primary", scale=1)
        with T.make(gr.Accordion, "presets.list", open=False):
            c["table"] = T.make(gr.Dataframe, "presets.table", interactive=False, max_height=300)
        c["description"] = T.make(gr.Markdown, "presets.description", value="")
        c["status"] = T.make(
            gr.Textbox, "presets.status", lines=3, interactive=False, elem_id="presets-status"
        )
        c["form"] = form.build_form(T)
        with gr.Row():
            c["validate"] = T.value(gr.Button, "presets.validate")
            c["estimate"] = T.value(gr.Button, "presets.estimate")
            c["new_name"] = T.make(gr.Textbox, "presets.new_name", scale=2)
            c["overwrite"] = T.make(gr.Checkbox, "presets.overwrite", value=False)
            c["save"] = T.value(gr.Button, "presets.save", variant="primary")
        c["cli"] = T.make(gr.Code, "presets.cli", language="shell", lines=2, interactive=False)
        with gr.Row():
            c["estimate_md"] = T.make(gr.Markdown, "presets.estimate_md", value="")
            with T.make(gr.Accordion, "presets.env", open=False):
                c["env"] = gr.Markdown(environment_markdown(T.lang))

    fields = [c["form"][k] for k in KEYS]
    st = c["status"]
    c["filter"].change(
        guard(list_presets, 2, None), c["filter"], [c["preset"], c["table"]], api_name="presets_list"
    )
    c["load"].click(
        guard(load_preset, len(fields) + 3, len(fields) + 2),
        [c["preset"], lang_state],
        [*fields, c["description"], c["cli"], st],
        api_name="presets_load",
    )
    c["validate"].click(guard(validate_form, 1, 0), [*fields, lang_state], st, api_name="presets_validate")
    c["estimate"].click(
        guard(estimate_form, 1, 0), [*fields, lang_state], c["estimate_md"], api_name="presets_estimate"
    )
    c["save"].click(
        guard(save_preset, 2, 0),
        [c["new_name"], c["overwrite"], *fields, lang_state],
        [st, c["preset"]],
        api_name="presets_save",
    )
    gr.on(
        [f.input for f in fields],
        cli_command,
        [c["preset"], *fields],
        c["cli"],
        api_name="presets_cli",
        show_progress="hidden",
    )
    return c
