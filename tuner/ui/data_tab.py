"""Data tab: upload or pick a file, map its columns, preview, convert, split, validate, identity data
and its held-out check (base vs tuned)."""

from __future__ import annotations

from pathlib import Path

from tuner.core.errors import TunerError
from tuner.ui.common import (
    data_output,
    data_ref,
    guard,
    model_ref,
    rel,
    save_upload,
    workspace_files,
    ws_path,
)
from tuner.ui.i18n import tr

NO_COLUMN = "(none)"
PREVIEW_ROWS = 8
HIST_BINS = 20


# ------------------------------------------------------------------------------------- handlers


def upload(file, lang: str = "en"):
    """A file dropped on the page -> copied into <workspace>/uploads; returns (file picker, status)."""
    import gradio as gr

    if not file:
        return gr.skip(), ""
    saved = save_upload(file if isinstance(file, str) else file.name)
    path = rel(saved)
    return gr.update(choices=workspace_files(), value=path), tr(lang, "data.uploaded", path=path)


def refresh_files():
    """The workspace's data files, for the file pickers."""
    import gradio as gr

    return gr.update(choices=workspace_files())


def inspect_file(path: str, lang: str = "en"):
    """Sheets, columns (with guesses for question/answer), preview rows and a status line."""
    import gradio as gr

    from tuner.data import tables

    file = ws_path(path, "file")
    sheets = tables.list_sheets(file)
    sheet = sheets[0] if sheets else None
    cols, preview, q, a = _columns_and_preview(file, sheet)
    stem = Path(path).with_suffix("")
    out = f"{stem}.jsonl" if file.suffix.lower() not in (".jsonl",) else f"{stem}-converted.jsonl"
    return (
        gr.update(choices=sheets, value=sheet, visible=bool(sheets)),
        gr.update(choices=cols, value=q),
        gr.update(choices=cols, value=a),
        gr.update(choices=[NO_COLUMN, *cols], value=NO_COLUMN),
        preview,
        out,
        tr(lang, "data.inspected", columns=len(cols), sheets=len(sheets)),
    )


def change_sheet(path: str, sheet: str | None):
    """Columns and preview of another sheet."""
    import gradio as gr

    cols, preview, q, a = _columns_and_preview(ws_path(path, "file"), sheet or None)
    return (
        gr.update(choices=cols, value=q),
        gr.update(choices=cols, value=a),
        gr.update(choices=[NO_COLUMN, *cols], value=NO_COLUMN),
        preview,
    )


def _columns_and_preview(file: Path, sheet: str | None):
    import pandas as pd

    from tuner.data import convert, tables

    try:
        cols = tables.list_columns(file, sheet)
        rows = tables.preview_rows(file, sheet, PREVIEW_ROWS)
    except TunerError:
        if file.suffix.lower() in (".jsonl", ".json", ".txt"):  # chat / pretraining data: no table
            return [], _sample_preview(file), None, None
        raise
    lowered = [c.strip().lower() for c in cols]
    q = next(
        (cols[i] for i, c in enumerate(lowered) if c in convert.QUESTION_NAMES), cols[0] if cols else None
    )
    a = next(
        (cols[i] for i, c in enumerate(lowered) if c in convert.ANSWER_NAMES), cols[-1] if cols else None
    )
    preview = pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols or ["(empty)"])
    return cols, preview, q, a


def _sample_preview(file: Path):
    """Preview of data that is already chat or text data: role / content of the first samples."""
    import pandas as pd

    from tuner.data.formats import load_samples

    result = load_samples(file)
    rows = []
    for sample in result.samples[:PREVIEW_ROWS]:
        line = sample.get("source", {}).get("line")
        for m in sample.get("messages", [{"role": "text", "content": sample.get("text", "")}]):
            rows.append({"line": line, "role": m["role"], "content": m["content"][:300]})
    return pd.DataFrame(rows, columns=["line", "role", "content"])


def convert_file(path, sheet, question, answer, system_column, system, out, overwrite, lang: str = "en"):
    """Convert the mapped table into conversation JSONL; returns (status, output path)."""
    from tuner.data.convert import convert_table

    source = ws_path(path, "file")
    target = data_output(out)
    result = convert_table(
        source,
        target,
        sheet=sheet or None,
        question=question or None,
        answer=answer or None,
        system=(system or "").strip() or None,
        system_column=None if system_column in (None, "", NO_COLUMN) else system_column,
        force=bool(overwrite),
    )
    return "✅ " + result.summary(), rel(result.output)


def split(path, test_ratio, seed, overwrite, lang: str = "en"):
    """Random train/test split; returns (status, train path, test path)."""
    from tuner.data.split import split_file

    source = ws_path(path, "file")
    # the parts are written beside the input: the same rules as any output of this tab
    data_output(source.with_name(f"{source.stem}-train.jsonl"), "train part")
    data_output(source.with_name(f"{source.stem}-test.jsonl"), "test part")
    result = split_file(source, float(test_ratio), int(seed or 0), force=bool(overwrite))
    return "✅ " + result.summary(), rel(result.train_path), rel(result.test_path)


def validate(path, fmt, model, system, max_length, lang: str = "en"):
    """Check a data file: problems with line numbers, counts, and a token-length histogram."""
    import pandas as pd

    from tuner.ui.datacheck import check_file

    report = check_file(
        data_ref(path, "file"),
        fmt or "auto",
        model or "default",
        (system or "").strip() or None,
        int(max_length or 2048),
    )
    lengths = report["lengths"]
    hist = _histogram(lengths) if lengths else pd.DataFrame({"tokens": [], "samples": []})
    return report["markdown"], hist, ("✅ " if not report["problems"] else "⚠️ ") + report["summary"]


def _histogram(lengths: list[int]):
    import pandas as pd

    top = max(lengths)
    width = max(1, -(-top // HIST_BINS))
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n // width] = counts.get(n // width, 0) + 1
    bins = range(0, top // width + 1)
    return pd.DataFrame(
        {
            "tokens": [f"{b * width}-{(b + 1) * width - 1}" for b in bins],
            "samples": [counts.get(b, 0) for b in bins],
        }
    )


def build_identity(
    name, persona, languages, mix_general, out, overwrite, model="default", lang: str = "en"
):
    """Write identity data ("who are you?" answered with the new name); returns (status, path, preview).

    ``mix_general``: mix in the base model's own general answers, as many per language as identity
    conversations, and make-identity's default KL probes (off: neither).
    """
    import pandas as pd

    from tuner.chat.generate import general_answerer, probe_answerer
    from tuner.data.formats import load_samples
    from tuner.data.identity import KL_PROBES, make_identity

    target = data_output(out)
    result = make_identity(
        target,
        name,
        (persona or "").strip() or None,
        langs=list(languages or ["en"]),
        mix_general=None if mix_general else 0,
        force=bool(overwrite),
        general_source=general_answerer(model_ref(model)) if mix_general else None,
        kl_probes=KL_PROBES if mix_general else 0,
        probe_source=probe_answerer(model_ref(model)) if mix_general and KL_PROBES else None,
    )
    samples = load_samples(target).samples
    rows = [
        {"question": s["messages"][-2]["content"], "answer": s["messages"][-1]["content"]}
        for s in samples[:PREVIEW_ROWS]
    ]
    status = tr(
        lang, "data.identity_done", n=result.identity_count, general=result.general_count, path=rel(target)
    )
    if result.probe_count:
        status += "\n" + tr(lang, "data.identity_probes", n=result.probe_count)
    if result.rejected:
        # which general answers were unfit to train on, and why (the summary's later lines)
        status += "\n" + "\n".join(result.summary().splitlines()[1:])
    return status, rel(target), pd.DataFrame(rows, columns=["question", "answer"])


def check_identity_run(run, name, languages, lang: str = "en"):
    """The held-out identity check of a run, base vs tuned; returns (summary, answers table)."""
    import pandas as pd

    from tuner.chat.identity_check import check_identity

    if not (run or "").strip():
        raise TunerError(tr(lang, "data.id_check_no_run"))
    result = check_identity(ws_path(run, "run"), (name or "").strip(), langs=tuple(languages or ["en"]))
    t = result.totals
    summary = tr(
        lang,
        "data.id_check_done",
        verdict="✅" if result.passed else "⚠️",
        name=result.name,
        id_base=result.base.identity,
        id_tuned=result.tuned.identity,
        n_id=t["identity"],
        leak_base=result.base.leaks,
        leak_tuned=result.tuned.leaks,
        n_leak=t["leakage"],
        k_base=result.base.knowledge,
        k_tuned=result.tuned.knowledge,
        n_k=t["knowledge"],
        lost=", ".join(result.lost) or "-",
    )
    return summary, pd.DataFrame(result.rows, columns=["set", "lang", "question", "base", "tuned"])


# ------------------------------------------------------------------------------------- layout


def build(T, lang_state, status_default=""):
    """Create the Data tab's components and events; returns components other tabs use."""
    import gradio as gr

    c = {}
    with T.make(gr.Tab, "tab.data", id="data"):
        T.value(gr.Markdown, "data.intro")
        with gr.Row():
            c["upload"] = T.make(
                gr.File,
                "data.upload",
                file_types=[".xlsx", ".csv", ".json", ".jsonl", ".txt"],
                scale=1,
                height=120,
            )
            with gr.Column(scale=2):
                c["file"] = T.make(
                    gr.Dropdown, "data.file", choices=workspace_files(), allow_custom_value=True
                )
                with gr.Row():
                    c["refresh"] = T.value(gr.Button, "data.refresh", size="sm")
                    c["inspect"] = T.value(gr.Button, "data.inspect", size="sm", variant="primary")
        c["status"] = T.make(
            gr.Textbox, "data.status", value=status_default, lines=3, interactive=False, elem_id="data-status"
        )
        with T.make(gr.Accordion, "data.convert_group", open=True):
            with gr.Row():
                c["sheet"] = T.make(gr.Dropdown, "data.sheet", choices=[], visible=False)
                c["question"] = T.make(gr.Dropdown, "data.question", choices=[], allow_custom_value=True)
                c["answer"] = T.make(gr.Dropdown, "data.answer", choices=[], allow_custom_value=True)
                c["system_column"] = T.make(
                    gr.Dropdown, "data.system_column", choices=[NO_COLUMN], value=NO_COLUMN
                )
            c["system"] = T.make(gr.Textbox, "data.system", lines=2)
            c["preview"] = T.make(gr.Dataframe, "data.preview", interactive=False, wrap=True, max_height=300)
            with gr.Row():
                c["out"] = T.make(gr.Textbox, "data.out", scale=3)
                c["overwrite"] = T.make(gr.Checkbox, "data.overwrite", value=False, scale=1)
                c["convert"] = T.value(gr.Button, "data.convert", variant="primary", scale=1)
        with T.make(gr.Accordion, "data.split_group", open=False):
            with gr.Row():
                c["split_in"] = T.make(gr.Textbox, "data.split_in", scale=3)
                c["ratio"] = T.make(gr.Slider, "data.ratio", minimum=0.05, maximum=0.5, step=0.05, value=0.3)
                c["seed"] = T.make(gr.Number, "data.seed", value=0, precision=0, minimum=0)
                c["split"] = T.value(gr.Button, "data.split", variant="primary")
            with gr.Row():
                c["train_out"] = T.make(gr.Textbox, "data.train_out", interactive=False)
                c["test_out"] = T.make(gr.Textbox, "data.test_out", interactive=False)
        with T.make(gr.Accordion, "data.check_group", open=False):
            with gr.Row():
                c["check_in"] = T.make(gr.Textbox, "data.check_in", scale=3)
                from tuner.config.schema import DATA_FORMATS

                c["fmt"] = T.make(gr.Dropdown, "data.fmt", choices=list(DATA_FORMATS), value="auto")
                c["model"] = T.make(
                    gr.Dropdown, "data.model", choices=["default"], value="default", allow_custom_value=True
                )
                c["max_length"] = T.make(
                    gr.Slider, "data.max_length", minimum=64, maximum=32768, step=64, value=2048
                )
                c["check"] = T.value(gr.Button, "data.check", variant="primary")
                c["use"] = T.value(gr.Button, "data.use")
            with gr.Row():
                c["report"] = T.make(gr.Markdown, "data.report", value="", max_height=400)
                c["hist"] = T.make(gr.BarPlot, "data.hist", x="tokens", y="samples", height=260, sort=None)
        with T.make(gr.Accordion, "data.identity_group", open=True):
            with gr.Row():
                c["id_name"] = T.make(gr.Textbox, "data.id_name", value="Tutu")
                c["id_persona"] = T.make(gr.Textbox, "data.id_persona", value="")
                c["id_langs"] = T.make(gr.CheckboxGroup, "data.id_langs", choices=["en", "zh"], value=["en"])
                c["id_mix"] = T.make(gr.Checkbox, "data.id_mix", value=True)
                c["id_model"] = T.make(gr.Textbox, "data.id_model", value="default")
            with gr.Row():
                c["id_out"] = T.make(gr.Textbox, "data.id_out", value="data/identity.jsonl", scale=3)
                c["id_overwrite"] = T.make(
                    gr.Checkbox, "data.overwrite", value=False, scale=1, elem_id="data-id-overwrite"
                )
                c["id_build"] = T.value(gr.Button, "data.id_build", variant="primary", scale=1)
            c["id_preview"] = T.make(
                gr.Dataframe, "data.id_preview", interactive=False, wrap=True, max_height=260
            )
            with gr.Row():
                c["id_run"] = T.make(gr.Textbox, "data.id_run", value="", scale=3)
                c["id_check"] = T.value(gr.Button, "data.id_check", scale=1)
            c["id_check_summary"] = T.make(gr.Markdown, "data.id_check_summary", value="")
            c["id_check_rows"] = T.make(
                gr.Dataframe, "data.id_check_rows", interactive=False, wrap=True, max_height=400
            )

    st = c["status"]
    c["upload"].upload(
        guard(upload, 2, 1), [c["upload"], lang_state], [c["file"], st], api_name="data_upload"
    )
    c["refresh"].click(refresh_files, None, c["file"], api_name="data_refresh_files")
    inspect_outputs = [c["sheet"], c["question"], c["answer"], c["system_column"], c["preview"], c["out"], st]
    c["inspect"].click(
        guard(inspect_file, 7, 6), [c["file"], lang_state], inspect_outputs, api_name="data_inspect"
    )
    c["file"].change(lambda p: (p, p), c["file"], [c["split_in"], c["check_in"]], api_name="data_pick")
    c["sheet"].input(
        guard(change_sheet, 4, None),
        [c["file"], c["sheet"]],
        [c["question"], c["answer"], c["system_column"], c["preview"]],
        api_name="data_sheet",
    )
    c["convert"].click(
        guard(convert_file, 2, 0),
        [
            c["file"],
            c["sheet"],
            c["question"],
            c["answer"],
            c["system_column"],
            c["system"],
            c["out"],
            c["overwrite"],
            lang_state,
        ],
        [st, c["split_in"]],
        api_name="data_convert",
    ).success(lambda p: p, c["split_in"], c["check_in"], api_name="data_converted")
    c["split"].click(
        guard(split, 3, 0),
        [c["split_in"], c["ratio"], c["seed"], c["overwrite"], lang_state],
        [st, c["train_out"], c["test_out"]],
        api_name="data_split",
    )
    c["check"].click(
        guard(validate, 3, 2),
        [c["check_in"], c["fmt"], c["model"], c["system"], c["max_length"], lang_state],
        [c["report"], c["hist"], st],
        api_name="data_validate",
    )
    c["id_build"].click(
        guard(build_identity, 3, 0),
        [
            c["id_name"],
            c["id_persona"],
            c["id_langs"],
            c["id_mix"],
            c["id_out"],
            c["id_overwrite"],
            c["id_model"],
            lang_state,
        ],
        [st, c["check_in"], c["id_preview"]],
        api_name="data_identity",
    )
    c["id_check"].click(
        guard(check_identity_run, 2, 0),
        [c["id_run"], c["id_name"], c["id_langs"], lang_state],
        [c["id_check_summary"], c["id_check_rows"]],
        api_name="data_identity_check",
    )
    return c
