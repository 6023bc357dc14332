"""Export tab: pick a run or checkpoint, export a clean adapter, merge it into the base model."""

from __future__ import annotations

from pathlib import Path

from tuner.core.errors import TunerError
from tuner.ui.common import data_ref, guard, model_ref, rel, ws_path
from tuner.ui.i18n import tr

SHARD_SIZES = ["500MB", "1GB", "2GB", "5GB", "10GB"]
DTYPES = ["auto", "bf16", "fp16", "fp32"]
EXPORTS = "exports"
VERIFY_MAX_NEW_TOKENS = 128


def sources(run: str | None):
    """The run's adapter choices (final adapter, then checkpoints newest first) and default output folders."""
    import gradio as gr

    from tuner.runs.folders import ADAPTER_DIR, checkpoints

    if not run:
        return gr.update(choices=[], value=None), "", "", ""
    run_dir = ws_path(run, "run")
    choices = []
    if (run_dir / ADAPTER_DIR).is_dir():
        choices.append(rel(run_dir / ADAPTER_DIR))
    choices += [rel(p) for p in reversed(checkpoints(run_dir))]
    name = f"{run_dir.parent.name}-{run_dir.name}"
    base = _base_model(run_dir)
    return (
        gr.update(choices=choices, value=choices[0] if choices else None),
        f"{EXPORTS}/{name}-adapter",
        f"{EXPORTS}/{name}-merged",
        base,
    )


def _base_model(run_dir: Path) -> str:
    from tuner.config.files import read_yaml

    try:
        return str(read_yaml(run_dir / "config.yaml").get("model") or "default")
    except TunerError:
        return "default"


def export(source: str, out: str, overwrite: bool, lang: str = "en"):
    """Export the chosen adapter; returns (status, exported folder)."""
    from tuner.export.adapter import export_adapter

    result = export_adapter(
        ws_path(source, "adapter"), ws_path(out, "output", must_exist=False), force=bool(overwrite)
    )
    files = sorted(p.name for p in result.out_dir.iterdir())
    return tr(lang, "export.exported", path=rel(result.out_dir), files=", ".join(files)), rel(result.out_dir)


def merge(
    base: str,
    source: str,
    out: str,
    shard: str,
    dtype: str,
    verify: bool,
    prompt: str,
    overwrite: bool,
    lang: str = "en",
):
    """Merge the adapter into ``base``; returns (status, verification reply).

    The merge itself never verifies: the engine raises when the test reply does not end on the
    end-of-turn token, although the merged folder is saved by then. Here the reply is produced
    afterwards and a missing end-of-turn becomes a warning under the success line, with the reply shown.
    """
    from tuner.export.merge import merge_adapter

    result = merge_adapter(
        model_ref(base),
        ws_path(source, "adapter"),
        ws_path(out, "output", must_exist=False),
        dtype=dtype or "auto",
        max_shard_size=(shard or "2GB").strip(),
        force=bool(overwrite),
        verify=False,
    )
    files = sorted(p.name for p in result.out_dir.iterdir())
    status = tr(lang, "export.merged", path=rel(result.out_dir), dtype=result.dtype, files=", ".join(files))
    if not verify:
        return status, tr(lang, "export.not_verified")
    reply, ended, end_of_turn = verify_reply(result, (prompt or "").strip() or "Who are you?")
    if not ended:
        status += "\n" + tr(lang, "export.no_end_of_turn", eot=end_of_turn, n=VERIFY_MAX_NEW_TOKENS)
    return status, reply or tr(lang, "export.empty_reply")


def write_gguf_file(merged: str, kind: str, overwrite: bool, lang: str = "en") -> str:
    """Write ``<merged folder>/model.gguf`` (the name its Modelfile uses); returns the status line."""
    from tuner.export.gguf import GGUF_NAME, write_gguf
    from tuner.export.merge import MODELFILE

    folder = ws_path(merged, "merged model")
    if not (folder / "config.json").is_file():
        raise TunerError(f"{rel(folder)} is not a merged model folder: merge first")
    result = write_gguf(folder, folder / GGUF_NAME, kind=kind or "f16", force=bool(overwrite))
    return tr(
        lang, "export.gguf_done", path=rel(result.path), arch=result.architecture, type=result.type,
        eot=result.eot_token, modelfile=rel(folder / MODELFILE),
    )


def run_evaluation(source, test, metrics, max_new_tokens, batch_size, compare, lang: str = "en"):
    """Score the chosen adapter on a test file (tuner.export.evaluate); returns (status, scores table)."""
    from tuner.export.evaluate import evaluate
    from tuner.export.metrics import LABELS, parse_metrics

    result = evaluate(
        str(ws_path(source, "adapter")),
        data_ref(test, tr(lang, "export.eval_test")),
        metrics=parse_metrics(metrics or []),
        max_new_tokens=int(max_new_tokens or 256),
        batch_size=int(batch_size or 8),
        compare_base=bool(compare),
    )
    sides = list(result.scores)
    table = ["| | " + " | ".join(s.replace("_", "-") for s in sides) + " |", "|---" * (len(sides) + 1) + "|"]
    for name in result.scores[sides[0]]:
        table.append(
            f"| {LABELS[name]} | " + " | ".join(f"{result.scores[s][name]:.2f}" for s in sides) + " |"
        )
    status = tr(
        lang,
        "export.eval_done",
        n=result.samples,
        samples=rel(result.samples_path),
        results=rel(result.results_path),
    )
    return status, "\n".join(table)


def verify_reply(result, prompt: str) -> tuple[str, bool, str]:
    """The merged folder answers ``prompt``: (reply, ended on the end-of-turn token, that token)."""
    from transformers import AutoTokenizer

    from tuner.chat.text import resolve_chat_template
    from tuner.export.merge import verify_merged

    tokenizer = AutoTokenizer.from_pretrained(str(result.out_dir))
    template = resolve_chat_template(tokenizer, result.template)
    reply, ended = verify_merged(
        result.out_dir, template, prompt=prompt, max_new_tokens=VERIFY_MAX_NEW_TOKENS
    )
    return reply, ended, template.end_of_turn


def build(T, lang_state, runs_default: list[str]):
    import gradio as gr

    from tuner.export.gguf import TYPES as GGUF_TYPES
    from tuner.export.merge import VERIFY_PROMPT
    from tuner.export.metrics import METRICS

    c = {}
    with T.make(gr.Tab, "tab.export", id="export"):
        T.value(gr.Markdown, "export.intro")
        with gr.Row():
            c["run"] = T.make(
                gr.Dropdown, "export.run", choices=runs_default, allow_custom_value=True, scale=3
            )
            c["refresh"] = T.value(gr.Button, "train.refresh", size="sm", scale=1)
            c["source"] = T.make(gr.Dropdown, "export.source", choices=[], allow_custom_value=True, scale=3)
        c["status"] = T.make(gr.Textbox, "export.status", lines=3, interactive=False, elem_id="export-status")
        with gr.Row():
            c["out"] = T.make(gr.Textbox, "export.out", scale=3)
            c["overwrite"] = T.make(gr.Checkbox, "data.overwrite", value=False)
            c["export"] = T.value(gr.Button, "export.export", variant="primary")
        with T.make(gr.Accordion, "export.merge_group", open=True):
            with gr.Row():
                c["base"] = T.make(
                    gr.Dropdown, "export.base", choices=["default"], value="default", allow_custom_value=True
                )
                c["merged_out"] = T.make(gr.Textbox, "export.merged_out", scale=2)
                c["shard"] = T.make(
                    gr.Dropdown, "export.shard", choices=SHARD_SIZES, value="2GB", allow_custom_value=True
                )
                c["dtype"] = T.make(gr.Dropdown, "export.dtype", choices=DTYPES, value="auto")
            with gr.Row():
                c["verify"] = T.make(gr.Checkbox, "export.verify", value=True)
                c["prompt"] = T.make(gr.Textbox, "export.prompt", value=VERIFY_PROMPT, scale=3)
                c["merge"] = T.value(gr.Button, "export.merge", variant="primary")
            c["reply"] = T.make(gr.Textbox, "export.reply", lines=3, interactive=False)
            with gr.Row():
                c["gguf_type"] = T.make(gr.Dropdown, "export.gguf_type", choices=list(GGUF_TYPES), value="f16")
                c["gguf"] = T.value(gr.Button, "export.gguf")
        with T.make(gr.Accordion, "export.eval_group", open=False):
            T.value(gr.Markdown, "export.eval_intro")
            with gr.Row():
                c["eval_test"] = T.make(gr.Textbox, "export.eval_test", scale=3)
                c["eval_metrics"] = T.make(
                    gr.CheckboxGroup, "export.eval_metrics", choices=list(METRICS), value=list(METRICS)
                )
            with gr.Row():
                c["eval_tokens"] = T.make(
                    gr.Slider, "export.eval_max_new_tokens", minimum=16, maximum=1024, step=16, value=256
                )
                c["eval_batch"] = T.make(gr.Slider, "export.eval_batch", minimum=1, maximum=64, step=1, value=8)
                c["eval_base"] = T.make(gr.Checkbox, "export.eval_base", value=True)
                c["eval"] = T.value(gr.Button, "export.eval_run", variant="primary")
            c["eval_scores"] = T.make(gr.Markdown, "export.eval_metrics", value="", elem_id="export-eval-scores")

    from tuner.ui.common import run_choices

    c["refresh"].click(run_choices, None, c["run"], api_name="export_runs")
    c["run"].change(
        guard(sources, 4, None),
        c["run"],
        [c["source"], c["out"], c["merged_out"], c["base"]],
        api_name="export_sources",
    )
    c["export"].click(
        guard(export, 2, 0),
        [c["source"], c["out"], c["overwrite"], lang_state],
        [c["status"], c["out"]],
        api_name="export_adapter",
    )
    c["merge"].click(
        guard(merge, 2, 0),
        [
            c["base"],
            c["source"],
            c["merged_out"],
            c["shard"],
            c["dtype"],
            c["verify"],
            c["prompt"],
            c["overwrite"],
            lang_state,
        ],
        [c["status"], c["reply"]],
        api_name="export_merge",
    )
    c["eval"].click(
        guard(run_evaluation, 2, 0),
        [
            c["source"],
            c["eval_test"],
            c["eval_metrics"],
            c["eval_tokens"],
            c["eval_batch"],
            c["eval_base"],
            lang_state,
        ],
        [c["status"], c["eval_scores"]],
        api_name="export_evaluate",
    )
    c["gguf"].click(
        guard(write_gguf_file, 1, 0),
        [c["merged_out"], c["gguf_type"], c["overwrite"], lang_state],
        c["status"],
        api_name="export_gguf",
    )
    return c
