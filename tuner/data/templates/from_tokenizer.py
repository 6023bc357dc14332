"""A tokenizer's own chat template as tuner uses it: where its turns end (found by rendering a probe
conversation), and the system prompt a template adds on its own."""

from __future__ import annotations

import logging

from tuner.core.errors import TunerError
from tuner.data.templates.base import ChatTemplate

log = logging.getLogger(__name__)


_PROBE_ANSWER = "tuner-probe-answer-7"


def _detect_end_of_turn(tokenizer, chat_template: str) -> str | None:
    """Render a probe conversation and read what the template puts right after the answer."""
    messages = [
        {"role": "user", "content": "tuner-probe-question"},
        {"role": "assistant", "content": _PROBE_ANSWER},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=False)
    except Exception as exc:  # a foreign template can raise anything; fall back to EOS
        log.debug("probe rendering failed: %s", exc)
        return None
    at = text.rfind(_PROBE_ANSWER)
    if at < 0:
        return None
    rest = text[at + len(_PROBE_ANSWER) :]
    specials = sorted(
        {*tokenizer.all_special_tokens, *getattr(tokenizer, "added_tokens_encoder", {})},
        key=len,
        reverse=True,
    )
    stripped = rest.lstrip(" ")
    for token in specials:
        if token and stripped.startswith(token):
            return token
    return None


def from_tokenizer(tokenizer) -> ChatTemplate:
    """The tokenizer's own chat template as a ChatTemplate (end of turn detected by a probe).

    Raises TunerError when the tokenizer has no chat template.
    """
    jinja = getattr(tokenizer, "chat_template", None)
    if isinstance(jinja, dict):  # several named templates: the "default" one is the chat template
        jinja = jinja.get("default")
    if not jinja:
        raise TunerError("the tokenizer has no chat template; choose a named template")
    end = _detect_end_of_turn(tokenizer, jinja) or tokenizer.eos_token
    if not end:
        raise TunerError("cannot tell how the tokenizer's chat template ends a turn; choose a named template")
    stops = (end,) + ((tokenizer.eos_token,) if tokenizer.eos_token and tokenizer.eos_token != end else ())
    source = getattr(tokenizer, "name_or_path", "") or "tokenizer"
    return ChatTemplate(
        name="tokenizer",
        end_of_turn=end,
        stop_words=stops,
        description=f"the chat template of {source}",
        jinja=jinja,
        tokenizer=tokenizer,
    )


def implicit_system(template: ChatTemplate) -> str | None:
    """The system prompt a template inserts into conversations that have none (None if it adds none).

    Users must see it: SmolLM2's template, for example, silently makes every sample start with
    "You are a helpful AI assistant named SmolLM...".

    >>> implicit_system(get_template("qwen_chat"))
    'You are a helpful assistant.'
    """
    if template.is_builtin:
        return template.default_system
    mark, user = "tuner-probe-system-3", [{"role": "user", "content": "tuner-probe-question"}]
    try:
        with_mark = template.render([{"role": "system", "content": mark}, *user])
        without = template.render(user)
    except Exception:  # templates that refuse a system message have no implicit one to report
        return None
    before, found, after = with_mark.partition(mark)
    if not found or len(without) < len(before) + len(after):
        return None
    if not (without.startswith(before) and without.endswith(after)):
        return None
    return without[len(before) : len(without) - len(after)] or None
