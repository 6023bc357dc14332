"""Train tab: start the form's settings in the background job, watch it live, stop / cancel / resume,
and browse past runs.

Everything shown is derived from the job's events (or a run folder's events.jsonl), never kept in
the browser: a reloaded page finds the running job's view again on the next timer tick.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tuner.config.files import load_config
from tuner.config.schema import KEYS
from tuner.core.workspace import workspace_dir
from tuner.runs.events import whole_run
from tuner.runs.plot import loss_series
from tuner.ui.chart import loss_chart, progress_html
from tuner.ui.common import confine_config, guard, rel, run_choices, ws_path
from tuner.ui.form import form_config
from tuner.ui.i18n import tr

POLL_SECONDS = 1.0
LOG_TAIL_LINES = 80
ANSWER_ROUNDS_SHOWN = 3


# ------------------------------------------------------------------------------------- the view


def _fmt_s(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def render(events: list[dict], status: str, run_dir: Path | None, lang: str = "en") -> dict:
    """The live view of a run from its events: status, progress, metrics, chart, answers, log."""
    progress_events = [e for e in events if e.get("total_steps")]
    last = progress_events[-1] if progress_events else {}
    step, total = int(last.get("step") or 0), last.get("total_steps")
    timed = [e for e in events if e["type"] in ("log", "eval", "summary")]
    last_log = timed[-1] if timed else {}
    caption = tr(
        lang,
        "train.progress",
        step=step,
        total=total or "?",
        pct=f"{100 * step / total:.0f}" if total else "0",
        elapsed=_fmt_s(last_log.get("elapsed_s")),
        eta=_fmt_s(last_log.get("eta_s")),
    )
    messages = [e for e in events if e.get("message") and e["type"] != "error"]
    errors = [e for e in events if e["type"] == "error"]
    head = tr(lang, f"train.status.{status}") if status else ""
    lines = [f"**{head}**" + (f" — `{rel(run_dir)}`" if run_dir else "")]
    if messages:
        lines.append(_short_paths(messages[-1]["message"]))
    if errors:
        lines.append("❌ " + _short_paths(errors[-1]["message"]))
    metrics = _metrics(events, lang)
    return {
        "status": "\n\n".join(lines),
        "progress": progress_html(step, total, caption),
        "metrics": metrics,
        "chart": loss_chart(loss_series(events), empty=tr(lang, "train.no_loss")),
        "answers": _answers(events, lang),
        "log": _log_tail(run_dir, events),
    }


def _short_paths(text: str) -> str:
    """Engine messages name absolute paths; inside the workspace they read better relative to it."""
    root = str(workspace_dir())
    return text.replace(root + os.sep, "").replace(root, ".")


def _metrics(events: list[dict], lang: str) -> str:
    def latest(key):
        found = [e[key] for e in events if e.get(key) is not None]
        return found[-1] if found else None

    items = [
        ("loss", latest("loss"), "{:.4f}"),
        ("eval_loss", latest("eval_loss"), "{:.4f}"),
        ("lr", latest("lr"), "{:.2e}"),
        ("tokens/s", latest("tokens_per_s"), "{:.0f}"),
        (tr(lang, "train.gpu_mem"), latest("gpu_mem_gib"), "{:.2f} GiB"),
        ("epoch", latest("epoch"), "{:.2f}"),
    ]
    return " · ".join(f"{name}: **{fmt.format(v) if v is not None else '-'}**" for name, v, fmt in items)


def _answers(events: list[dict], lang: str) -> str:
    rounds = [e for e in events if e["type"] == "sample" and e.get("samples")]
    if not rounds:
        return tr(lang, "train.no_answers")
    out = []
    for e in rounds[-ANSWER_ROUNDS_SHOWN:][::-1]:
        out.append(f"\n**{tr(lang, 'train.step')} {e.get('step', 0)}**\n")
        for s in e["samples"]:
            answer = (s.get("answer") or "").replace("\n", " ")
            out.append(f"- *{s.get('prompt', '')}* → {answer}")
    return "\n".join(out)


def _log_tail(run_dir: Path | None, events: list[dict]) -> str:
    if run_dir and (Path(run_dir) / "train.log").is_file():
        lines = (Path(run_dir) / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])
    return "\n".join(json.dumps(e, ensure_ascii=False) for e in events[-LOG_TAIL_LINES:])


def _with_earlier_sessions(events: list[dict], run_dir: Path | None) -> list[dict]:
    """The job's events, preceded by the run's earlier sessions when the job resumed it."""
    from tuner.runs.events import read_events

    resumed = any(e.get("status") == "running" and e.get("step") for e in events)
    if not (resumed and run_dir and events):
        return events
    earlier = [e for e in read_events(run_dir) if e["time"] < events[0]["time"]]
    return whole_run(earlier + events)


# ------------------------------------------------------------------------------------- handlers


def _job():
    from tuner.train.job import get_job

    return get_job()


def start(*values_and_lang):
    """Start training the form's settings in the background; returns the status text."""
    *values, lang = values_and_lang
    config = confine_config(form_config(values, check_files=True))
    run_dir = _job().start(config)
    return tr(lang, "train.started", run=rel(run_dir))


def stop(lang: str = "en"):
    _job().stop(save=True)
    return tr(lang, "train.stopping")


def cancel(lang: str = "en"):
    _job().stop(save=False)
    return tr(lang, "train.cancelling")


def resume(run: str | None, *values_and_lang):
    """Continue the run picked in the history (or the latest run of the form's name) from its last checkpoint."""
    from tuner.runs.resume import RunFinished

    *values, lang = values_and_lang
    try:
        if run:
            run_dir = ws_path(run, "run")
            config = confine_config(load_config(run_dir / "config.yaml"))
            started = _job().start(config, resume=True, run_dir=run_dir)
        else:
            started = _job().start(confine_config(form_config(values, check_files=True)), resume=True)
    except RunFinished as done:  # a fact, not a failure: nothing is left to train
        return "✅ " + _short_paths(str(done))
    return tr(lang, "train.resumed", run=rel(started))


def poll(seen: str, lang: str = "en"):
    """One timer tick: the job's view, or nothing new (every output skipped) when nothing changed."""
    import gradio as gr

    job = _job()
    events = job.events(0)
    signature = f"{job.run_dir}|{job.status}|{len(events)}|{lang}"
    if signature == seen:
        return [seen] + [gr.skip()] * 6
    if job.status == "idle" and not events:
        view = {
            "status": tr(lang, "train.idle"),
            "progress": progress_html(0, None, ""),
            "metrics": "",
            "chart": loss_chart({}, empty=tr(lang, "train.no_loss")),
            "answers": "",
            "log": "",
        }
    else:
        view = render(_with_earlier_sessions(events, job.run_dir), job.status, job.run_dir, lang)
        error = _short_paths(job.error or "")
        if job.status == "failed" and error and error not in view["status"]:
            view["status"] += f"\n\n❌ {error}"
    return [
        signature,
        view["status"],
        view["progress"],
        view["metrics"],
        view["chart"],
        view["answers"],
        view["log"],
    ]


def show_run(run: str, lang: str = "en"):
    """A past run: its chart, status, config, outputs and evaluation answers."""
    from tuner.runs.events import read_events
    from tuner.runs.folders import checkpoints
    from tuner.runs.status import read_status

    if not run:  # the picker was emptied (e.g. at page load): nothing to show, nothing wrong
        return "", "", "", "", ""
    run_dir = ws_path(run, "run")
    events = whole_run(read_events(run_dir))
    info = read_status(run_dir)  # a killed run says "interrupted", never "running" forever
    status = info.get("status") or (events[-1].get("status") if events else "unknown")
    view = render(events, status, run_dir, lang)
    config_text = (
        (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() else ""
    )
    outputs = [f"- `{rel(p)}`" for p in checkpoints(run_dir)]
    if (run_dir / "adapter").is_dir():
        outputs.append(f"- `{rel(run_dir / 'adapter')}` ({tr(lang, 'train.final_adapter')})")
    if info.get("finished"):
        outputs.append(
            tr(
                lang,
                "train.finished_at",
                when=time.strftime("%Y-%m-%d %H:%M", time.localtime(info["finished"])),
            )
        )
    if info.get("error"):
        outputs.append(f"❌ {info['error']}")
    usable = (run_dir / "adapter").is_dir() or bool(checkpoints(run_dir))
    outputs.append(tr(lang, "train.usable" if usable else "train.unusable"))
    return view["status"], view["chart"], config_text, "\n".join(outputs), view["answers"]


# ------------------------------------------------------------------------------------- layout


def build(T, lang_state, form_components: dict):
    import gradio as gr

    fields = [form_components[k] for k in KEYS]
    c = {}
    with T.make(gr.Tab, "tab.train", id="train"):
        T.value(gr.Markdown, "train.intro")
        with gr.Row():
            c["start"] = T.value(gr.Button, "train.start", variant="primary")
            c["stop"] = T.value(gr.Button, "train.stop")
            c["cancel"] = T.value(gr.Button, "train.cancel", variant="stop")
            c["resume"] = T.value(gr.Button, "train.resume")
        c["action"] = T.make(gr.Textbox, "train.action", interactive=False, lines=1, elem_id="train-action")
        c["status"] = T.make(gr.Markdown, "train.status", value="", elem_id="train-status")
        c["progress"] = T.make(
            gr.HTML, "train.progress_label", value=progress_html(0, None, ""), elem_id="train-progress"
        )
        c["metrics"] = T.make(gr.Markdown, "train.metrics", value="")
        with gr.Row(equal_height=False):
            c["chart"] = T.make(
                gr.HTML,
                "train.chart",
                value=loss_chart({}, empty=T("train.no_loss")),
                scale=3,
                elem_id="train-chart",
            )
            c["answers"] = T.make(
                gr.Markdown, "train.answers", value="", max_height=300, elem_id="train-answers"
            )
        c["log"] = T.make(gr.Textbox, "train.log", lines=10, max_lines=10, interactive=False, autoscroll=True)
        with T.make(gr.Accordion, "train.history", open=False):
            with gr.Row():
                c["run"] = T.make(gr.Dropdown, "train.run", choices=[], allow_custom_value=True, scale=4)
                c["refresh"] = T.value(gr.Button, "train.refresh", size="sm", scale=1)
            c["h_status"] = T.make(gr.Markdown, "train.h_status", value="")
            with gr.Row(equal_height=False):
                c["h_chart"] = T.make(gr.HTML, "train.chart", value="", scale=3)
                c["h_outputs"] = T.make(gr.Markdown, "train.h_outputs", value="")
            c["h_answers"] = T.make(gr.Markdown, "train.answers", value="")
            c["h_config"] = T.make(
                gr.Code, "train.h_config", language="yaml", interactive=False, max_lines=25
            )
        c["seen"] = gr.State("")
        c["timer"] = gr.Timer(POLL_SECONDS)

    act = c["action"]
    c["start"].click(guard(start, 1, 0), [*fields, lang_state], act, api_name="train_start")
    c["stop"].click(guard(stop, 1, 0), lang_state, act, api_name="train_stop")
    c["cancel"].click(guard(cancel, 1, 0), lang_state, act, api_name="train_cancel")
    c["resume"].click(guard(resume, 1, 0), [c["run"], *fields, lang_state], act, api_name="train_resume")
    live = [c["seen"], c["status"], c["progress"], c["metrics"], c["chart"], c["answers"], c["log"]]
    c["timer"].tick(poll, [c["seen"], lang_state], live, api_name="train_poll", show_progress="hidden")
    c["refresh"].click(run_choices, None, c["run"], api_name="train_runs")
    c["run"].change(
        guard(show_run, 5, 0),
        [c["run"], lang_state],
        [c["h_status"], c["h_chart"], c["h_config"], c["h_outputs"], c["h_answers"]],
        api_name="train_show_run",
    )
    return c
