"""Chat tab: talk to the base model or a fine-tune, streaming; base vs fine-tuned side by side; agent mode.

One model is loaded at a time (this is a single-user local app) and reused while the model,
adapter, bits and template stay the same.
"""

from __future__ import annotations

import threading

from tuner.core.errors import TunerError
from tuner.ui.common import guard, model_ref, rel, ws_path
from tuner.ui.i18n import tr

OWN_TEMPLATE = "(model's own)"
NO_ADAPTER = "(none)"
BITS = ["none", "8", "4"]
MODES = ["chat", "compare", "agent"]

_lock = threading.Lock()
_loaded: dict = {"key": None, "session": None}


def adapter_choices() -> list[str]:
    """Final adapters of past runs and exported adapters in the workspace, newest runs first."""
    from tuner.core.workspace import workspace_dir
    from tuner.runs.folders import ADAPTER_DIR, list_runs

    found = [rel(p / ADAPTER_DIR) for p in list_runs() if (p / ADAPTER_DIR / "adapter_config.json").is_file()]
    exports = workspace_dir() / "exports"
    if exports.is_dir():
        found += [rel(p) for p in sorted(exports.iterdir()) if (p / "adapter_config.json").is_file()]
    return [NO_ADAPTER, *found]


def refresh_adapters():
    import gradio as gr

    choices = adapter_choices()
    return gr.update(choices=choices, value=choices[1] if len(choices) > 1 else NO_ADAPTER)


def session(model: str, adapter: str | None, bits: str, template: str | None):
    """The loaded ChatSession for these settings (loading it when they changed)."""
    from tuner.chat.session import ChatSession

    adapter_path = None if adapter in (None, "", NO_ADAPTER) else str(ws_path(adapter, "adapter"))
    key = (model_ref(model), adapter_path, bits, template)
    with _lock:
        if _loaded["key"] != key:
            old = _loaded["session"]
            _loaded["key"], _loaded["session"] = None, None
            if old is not None:
                old.close()
            _loaded["session"] = ChatSession(
                key[0],
                adapter=adapter_path,
                bits=None if bits in (None, "", "none") else int(bits),
                template=None if template in (None, "", OWN_TEMPLATE) else template,
            )
            _loaded["key"] = key
        return _loaded["session"]


def load(model, adapter, bits, template, lang: str = "en"):
    """Load (or keep) the model; returns a status line."""
    chat = session(model, adapter, bits, template)
    what = f"{model or 'default'}" + (f" + {adapter}" if chat.adapter else "")
    return tr(lang, "chat.loaded", what=what)


def send(
    message,
    history,
    history_base,
    model,
    adapter,
    bits,
    template,
    system,
    mode,
    max_new_tokens,
    temperature,
    top_p,
    repetition_penalty,
    lang: str = "en",
):
    """Stream the answer: yields (chat, base chat, message box, status). History is openai-style dicts."""
    message = (message or "").strip()
    if not message:
        raise TunerError(tr(lang, "chat.empty"))
    chat = session(model, adapter, bits, template)
    chat.system = (system or "").strip() or None
    opts = {
        "max_new_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "repetition_penalty": float(repetition_penalty),
    }
    history = [*(history or []), {"role": "user", "content": message}]
    if mode == "compare":
        if not chat.has_adapter:
            raise TunerError(tr(lang, "chat.compare_needs_adapter"))
        history_base = [*(history_base or []), {"role": "user", "content": message}]
        base = tuned = ""
        for base, tuned in chat.stream_compare(message, **opts):
            yield (
                [*history, {"role": "assistant", "content": tuned}],
                [*history_base, {"role": "assistant", "content": base}],
                "",
                "…",
            )
        yield (
            [*history, {"role": "assistant", "content": tuned}],
            [*history_base, {"role": "assistant", "content": base}],
            "",
            tr(lang, "chat.done"),
        )
        return
    if mode == "agent":
        # Show the ReAct steps as they happen: thoughts, tool calls and their results, then the answer.
        shown = ""
        for step in _agent_steps(chat, message):
            shown = f"{shown}\n\n{step}".strip()
            yield [*history, {"role": "assistant", "content": shown}], history_base, "", "…"
        yield [*history, {"role": "assistant", "content": shown}], history_base, "", tr(lang, "chat.done")
        return
    # Keep the session's own history in step with what the page shows (a reload or Clear resets both).
    if len(chat.history) != (len(history) - 1) // 2:
        chat.reset()
    answer = ""
    for answer in chat.stream(message, cumulative=True, **opts):
        yield [*history, {"role": "assistant", "content": answer}], history_base, "", "…"
    yield [*history, {"role": "assistant", "content": answer}], history_base, "", tr(lang, "chat.done")


def _agent_steps(chat, message: str):
    """Markdown lines for each agent event; the whitelisted offline tools, web search only with a key."""
    from tuner.chat.agent import session_agent
    from tuner.chat.tools import default_tools, secrets_of

    agent = session_agent(chat, default_tools(), secrets=secrets_of())
    for event in agent.stream(message):
        if event.kind == "answer":
            yield event.text
        elif event.kind == "action":
            yield f"🔧 `{event.tool}` ← `{event.tool_input}`"
        elif event.kind == "observation":
            yield f"> {event.text[:800]}"
        elif event.text:
            yield f"*{event.text}*"


def clear():
    """Empty both chats and the model's conversation memory."""
    with _lock:
        if _loaded["session"] is not None:
            _loaded["session"].reset()
    return [], [], ""


def adapter_system(adapter: str | None):
    """The system prompt the adapter was trained with (from its run's config.yaml), to chat the same way."""
    import gradio as gr

    from tuner.config.files import read_yaml

    if adapter in (None, "", NO_ADAPTER):
        return gr.skip()
    folder = ws_path(adapter, "adapter")
    for holder in (folder, folder.parent):
        if (holder / "config.yaml").is_file():
            try:
                return read_yaml(holder / "config.yaml").get("system") or ""
            except TunerError:
                return gr.skip()
    return gr.skip()


def toggle_mode(mode: str):
    import gradio as gr

    return gr.update(visible=mode == "compare")


def build(T, lang_state):
    import gradio as gr

    from tuner.data.templates import list_templates

    c = {}
    with T.make(gr.Tab, "tab.chat", id="chat"):
        with gr.Row():
            c["model"] = T.make(
                gr.Dropdown, "chat.model", choices=["default"], value="default", allow_custom_value=True
            )
            c["adapter"] = T.make(
                gr.Dropdown,
                "chat.adapter",
                choices=adapter_choices(),
                elem_id="chat-adapter",
                value=NO_ADAPTER,
                allow_custom_value=True,
                scale=2,
            )
            c["refresh"] = T.value(gr.Button, "chat.refresh", size="sm")
            c["bits"] = T.make(gr.Dropdown, "chat.bits", choices=BITS, value="none")
            c["template"] = T.make(
                gr.Dropdown, "chat.template", choices=[OWN_TEMPLATE, *list_templates()], value=OWN_TEMPLATE
            )
        with gr.Row():
            c["system"] = T.make(gr.Textbox, "chat.system", scale=3)
            c["mode"] = T.make(gr.Radio, "chat.mode", choices=MODES, value="chat")
            c["load"] = T.value(gr.Button, "chat.load")
        with T.make(gr.Accordion, "chat.gen", open=False), gr.Row():
            c["max_new_tokens"] = T.make(
                gr.Slider, "chat.max_new_tokens", minimum=16, maximum=4096, step=16, value=256
            )
            c["temperature"] = T.make(
                gr.Slider, "chat.temperature", minimum=0.0, maximum=2.0, step=0.05, value=0.0
            )
            c["top_p"] = T.make(gr.Slider, "chat.top_p", minimum=0.05, maximum=1.0, step=0.05, value=0.9)
            c["rep"] = T.make(
                gr.Slider, "chat.repetition_penalty", minimum=1.0, maximum=2.0, step=0.05, value=1.1
            )
        with gr.Row(equal_height=True):
            c["base_chat"] = T.make(gr.Chatbot, "chat.base", visible=False, height=380)
            c["chat"] = T.make(gr.Chatbot, "chat.chat", height=380, elem_id="chat-chatbot")
        with gr.Row():
            c["message"] = T.make(gr.Textbox, "chat.message", scale=5, lines=1, elem_id="chat-message")
            c["send"] = T.value(gr.Button, "chat.send", variant="primary", scale=1)
            c["clear"] = T.value(gr.Button, "chat.clear", scale=1)
        c["status"] = T.make(gr.Textbox, "chat.status", interactive=False, lines=1, elem_id="chat-status")

    load_inputs = [c["model"], c["adapter"], c["bits"], c["template"], lang_state]
    c["load"].click(guard(load, 1, 0), load_inputs, c["status"], api_name="chat_load")
    c["refresh"].click(refresh_adapters, None, c["adapter"], api_name="chat_adapters")
    send_inputs = [
        c["message"],
        c["chat"],
        c["base_chat"],
        c["model"],
        c["adapter"],
        c["bits"],
        c["template"],
        c["system"],
        c["mode"],
        c["max_new_tokens"],
        c["temperature"],
        c["top_p"],
        c["rep"],
        lang_state,
    ]
    outputs = [c["chat"], c["base_chat"], c["message"], c["status"]]
    gr.on(
        [c["send"].click, c["message"].submit], guard(send, 4, 3), send_inputs, outputs, api_name="chat_send"
    )
    c["clear"].click(clear, None, [c["chat"], c["base_chat"], c["status"]], api_name="chat_clear")
    c["adapter"].change(
        guard(adapter_system, 1, None), c["adapter"], c["system"], api_name="chat_adapter_system"
    )
    c["mode"].change(toggle_mode, c["mode"], c["base_chat"], api_name="chat_mode")
    return c
