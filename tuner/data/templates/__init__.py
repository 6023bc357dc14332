from __future__ import annotations

import dataclasses
import logging

from tuner.core.errors import TunerError
from tuner.data.templates.base import BOS, EOS, ChatTemplate
from tuner.data.templates.named import TEMPLATES

log = logging.getLogger(__name__)


def list_templates() -> list[str]:
    """Names of the built-in templates.

    >>> "chatml" in list_templates()
    True
    """
    return sorted(TEMPLATES)


def _bind(t: ChatTemplate, bos: str, eos: str) -> ChatTemplate:
    """Replace the {bos}/{eos} placeholders of a template with a tokenizer's real tokens."""

    def sub(value):
        if isinstance(value, str):
            return value.replace(BOS, bos).replace(EOS, eos)
        if isinstance(value, tuple):
            return tuple(sub(v) for v in value if sub(v))
        return value

    changes = {
        f.name: sub(getattr(t, f.name)) for f in dataclasses.fields(t) if f.name not in ("name", "tokenizer")
    }
    return dataclasses.replace(t, **changes)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS in front of plain text (Llama-style) or not (GPT-2-style)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def get_template(name: str, tokenizer=None) -> ChatTemplate:
    """A built-in template by name.

    The ``default`` template ends turns with the tokenizer's EOS (and starts with its BOS when the
    tokenizer normally adds one); without a tokenizer it uses ``</s>`` and no BOS.

    >>> get_template("internlm_chat").end_of_turn
    '<eoa>'
    """
    if name not in TEMPLATES:
        raise TunerError(f"unknown template {name!r}; choose one of: {', '.join(list_templates())}")
    template = TEMPLATES[name]
    if tokenizer is None:
        return _bind(template, "", "</s>")
    eos = tokenizer.eos_token
    if not eos and EOS in template.end_of_turn:
        raise TunerError(f"template {name} ends turns with the tokenizer's EOS, but the tokenizer has none")
    bound = _bind(template, tokenizer.bos_token if _adds_bos(tokenizer) else "", eos or "")
    _warn_unknown_tokens(bound, tokenizer)
    return bound


def _warn_unknown_tokens(template: ChatTemplate, tokenizer) -> None:
    """A template whose end-of-turn is not one token of this tokenizer still works, but is costly to learn."""
    for text in {template.end_of_turn, template.bos} - {""}:
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) != 1:
            log.warning(
                "template %s: %r is not a single token of this tokenizer; the model must learn it "
                "from scratch. Is this the template of this model's family?",
                template.name,
                text,
            )


def resolve_template(tokenizer, name: str | None = None) -> ChatTemplate:
    """The template to train and chat with.

    A name picks a built-in template; no name (or ``"tokenizer"``) uses the tokenizer's own chat
    template, or ``default`` when it has none.

    >>> # resolve_template(qwen_tokenizer).end_of_turn -> '<|im_end|>'
    """
    if name and name != "tokenizer":
        return get_template(name, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        from tuner.data.templates.from_tokenizer import from_tokenizer

        return from_tokenizer(tokenizer)
    if name == "tokenizer":
        raise TunerError("the tokenizer has no chat template; choose a named template")
    return get_template("default", tokenizer)
