"""The whole app: a header with the language switch, then one tab per step of the workflow."""

from __future__ import annotations

import gradio as gr

from tuner.ui import chat_tab, data_tab, export_tab, presets_tab, train_tab
from tuner.ui.common import log_path, run_choices
from tuner.ui.i18n import LANGS, Texts, norm_lang

CSS = """
.tuner-chart-empty {color: #6b7280; padding: 24px; border: 1px dashed #d1d5db; border-radius: 8px}
"""
# Switching language reloads the page with ?lang=xx; the load event then relabels everything.
SWITCH_JS = """(lang) => { const u = new URL(window.location); u.searchParams.set('lang', lang);
window.location.assign(u.toString()); return lang; }"""


def page_lang(request: gr.Request | None, default: str) -> str:
    """The language asked for by ``?lang=`` in the page address, else the launch language."""
    asked = request.query_params.get("lang") if request is not None else None
    return norm_lang(asked) if asked else default


def build_app(lang: str = "en") -> gr.Blocks:
    """Build the Blocks app with every tab; ``lang`` is the launch language (en or zh)."""
    T = Texts(lang)
    with gr.Blocks(title="tuner", analytics_enabled=False) as demo:
        lang_state = gr.State(T.lang)
        with gr.Row(equal_height=True):
            T.value(gr.Markdown, "app.title", scale=4)
            switch = T.make(
                gr.Dropdown,
                "app.lang",
                choices=[("English", "en"), ("中文", "zh")],
                value=T.lang,
                scale=1,
                min_width=120,
            )
        T.value(gr.Markdown, "app.help")
        with gr.Tabs():
            data = data_tab.build(T, lang_state)
            presets = presets_tab.build(T, lang_state)
            train = train_tab.build(T, lang_state, presets["form"])
            runs = [p for p in _runs()]
            export_tab.build(T, lang_state, runs)
            chat_tab.build(T, lang_state)
        gr.Markdown(f"<small>log: {log_path()}</small>")

        bound = T.components()

        def on_load(request: gr.Request):
            page = page_lang(request, T.lang)
            return [page, page, *T.relabel(page)]

        demo.load(on_load, None, [lang_state, switch, *bound], api_name="page_load")
        # Fill the pickers that depend on the workspace at page load, not at build time.
        demo.load(
            presets_tab.list_presets, None, [presets["preset"], presets["table"]], api_name="presets_init"
        )
        demo.load(run_choices, None, train["run"], api_name="runs_init")
        switch.input(None, switch, None, js=SWITCH_JS, api_name="switch_lang")
        # Data made in the Data tab becomes the form's training data in one click.
        data["use"].click(
            _use_data,
            [data["check_in"], lang_state],
            [presets["form"]["data_path"], data["status"]],
            api_name="data_use",
        )
    demo.tuner_langs = list(LANGS)  # for tests
    return demo


def _use_data(path: str, lang: str):
    from tuner.ui.common import rel, ws_path
    from tuner.ui.i18n import tr

    if not path:
        return gr.skip(), tr(lang, "data.use_nothing")
    return rel(ws_path(path, "file")), tr(lang, "data.used", path=path)


def _runs() -> list[str]:
    from tuner.runs.folders import list_runs
    from tuner.ui.common import rel

    return [rel(p) for p in list_runs()]
