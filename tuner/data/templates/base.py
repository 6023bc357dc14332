"""Chat templates: named ones kept as plain data, or the tokenizer's own Jinja template.

A named template is a handful of strings (BOS text, system / user formats, the assistant prefix,
the end-of-turn string, a separator). From those we render conversations in Python *and* generate
an equivalent Jinja ``chat_template``, so a tokenizer exported after training carries exactly the
template the model was trained with::

    >>> t = get_template("chatml")
    >>> t.render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello<|im_end|>\\n'

Formats follow each family's official template (Meta's Llama 2/3 formats, InternLM's
``build_inputs`` / tokenizer_config templates, Qwen's ChatML). Content is inserted verbatim (the
official Llama templates strip surrounding whitespace; we leave that to the data).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tuner.core.errors import TunerError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
# Placeholder used by the default template until a tokenizer tells us its real EOS / BOS.
EOS = "{eos}"
BOS = "{bos}"


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template.

    Format strings use ``{system}`` and ``{content}`` placeholders (filled by plain replacement, so
    braces in user text are harmless). A rendered conversation is::

        bos + system.format(system) + for each turn:
            user turn:      user.format(content)          (user_with_system for the first turn
                                                           when the system is folded into it)
            assistant turn: assistant_prefix + answer.format(content) + end_of_turn + separator

    The supervised part of an assistant turn is ``answer.format(content) + end_of_turn``.

    Attributes:
        name: registry name, or ``"tokenizer"`` for a tokenizer's own template.
        end_of_turn: string that closes an assistant turn (``<|im_end|>``, ``<eoa>``, ``</s>``).
        stop_words: strings generation stops at.
        description: one line for listings.
    """

    name: str
    end_of_turn: str
    stop_words: tuple[str, ...] = ()
    bos: str = ""
    system: str | None = None
    user: str = "{content}"
    user_with_system: str | None = None
    assistant_prefix: str = ""
    answer: str = "{content}"
    separator: str = ""
    default_system: str | None = None
    description: str = ""
    # Set only for a tokenizer's own template: rendering then goes through the tokenizer.
    jinja: str | None = None
    tokenizer: Any = field(default=None, compare=False, repr=False)

    @property
    def is_builtin(self) -> bool:
        return self.jinja is None

    @cached_property
    def chat_template(self) -> str:
        """The Jinja template (for ``tokenizer.apply_chat_template`` and exported tokenizers)."""
        return self.jinja if self.jinja is not None else _to_jinja(self)

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """Render a conversation to text.

        Args:
            messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``; a system
                message may only come first.
            add_generation_prompt: append the assistant prefix, ready for the model to answer.

        >>> get_template("llama2_chat").render([{"role": "user", "content": "Hi"}], True)
        '<s>[INST] Hi [/INST]'
        """
        if not self.is_builtin:
            return self.tokenizer.apply_chat_template(
                list(messages),
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        system, turns = split_system(messages, self.default_system)
        parts = [self.bos]
        if system is not None and self.system is not None:
            parts.append(self.system.replace("{system}", system))
        if (
            system is not None
            and self.user_with_system is not None
            and (not turns or turns[0]["role"] != "user")
        ):
            raise TunerError(f"template {self.name}: a system message must be followed by a user message")
        for index, message in enumerate(turns):
            content = message["content"]
            if message["role"] == "user":
                if index == 0 and system is not None and self.user_with_system is not None:
                    parts.append(
                        self.user_with_system.replace("{system}", system).replace("{content}", content)
                    )
                else:
                    parts.append(self.user.replace("{content}", content))
            else:
                parts.append(
                    self.assistant_prefix
                    + self.answer.replace("{content}", content)
                    + self.end_of_turn
                    + self.separator
                )
        if add_generation_prompt:
            parts.append(self.assistant_prefix)
        return "".join(parts)


def split_system(messages: Sequence[dict], default: str | None = None) -> tuple[str | None, list[dict]]:
    """Split off a leading system message; check roles and contents.

    >>> split_system([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    ('S', [{'role': 'user', 'content': 'Q'}])
    """
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise TunerError(f"message {index}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(message.get("content"), str):
            raise TunerError(f"message {index} ({role}): content must be a string")
        if role == "system" and index > 0:
            raise TunerError(f"message {index}: only the first message may be a system message")
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return default, list(messages)


def _q(text: str) -> str:
    """A Jinja string literal (Jinja accepts Python-style escapes, which JSON's are a subset of)."""
    return json.dumps(text)


def _around(fmt: str, placeholder: str) -> tuple[str, str]:
    before, _, after = fmt.partition(placeholder)
    return before, after


def _to_jinja(t: ChatTemplate) -> str:
    """Generate the Jinja equivalent of ``t.render`` (kept in step by tests/test_templates.py)."""
    default = _q(t.default_system) if t.default_system is not None else "none"
    lines = [
        "{#- tuner template " + t.name + " -#}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set system = messages[0]['content'] -%}",
        "{%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        "{%- set system = " + default + " -%}",
        "{%- set loop_messages = messages -%}",
        "{%- endif -%}",
    ]
    if t.bos:
        lines.append("{{- " + _q(t.bos) + " -}}")
    if t.system is not None:
        a, b = _around(t.system, "{system}")
        lines.append(
            "{%- if system is not none -%}{{- " + _q(a) + " + system + " + _q(b) + " -}}{%- endif -%}"
        )
    ua, ub = _around(t.user, "{content}")
    user_line = "{{- " + _q(ua) + " + message['content'] + " + _q(ub) + " -}}"
    if t.user_with_system is not None:
        sa, rest = _around(t.user_with_system, "{system}")
        sb, sc = _around(rest, "{content}")
        lines.append(
            "{%- if system is not none and (not loop_messages or loop_messages[0]['role'] != 'user') -%}"
            "{{- raise_exception('a system message must be followed by a user message') -}}{%- endif -%}"
        )
        user_line = (
            "{%- if loop.first and system is not none -%}"
            "{{- " + _q(sa) + " + system + " + _q(sb) + " + message['content'] + " + _q(sc) + " -}}"
            "{%- else -%}" + user_line + "{%- endif -%}"
        )
    aa, ab = _around(t.answer, "{content}")
    lines += [
        "{%- for message in loop_messages -%}",
        "{%- if message['role'] == 'user' -%}",
        user_line,
        "{%- elif message['role'] == 'assistant' -%}",
        "{{- "
        + " + ".join(
            [_q(t.assistant_prefix + aa), "message['content']", _q(ab + t.end_of_turn + t.separator)]
        )
        + " -}}",
        "{%- else -%}",
        "{{- raise_exception('only the first message may be a system message; roles: user, assistant') -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    if t.assistant_prefix:
        lines.append("{%- if add_generation_prompt -%}{{- " + _q(t.assistant_prefix) + " -}}{%- endif -%}")
    return "\n".join(lines)


