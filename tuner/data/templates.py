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

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tuner.errors import TunerError

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


_CHATML = dict(
    system="<|im_start|>system\n{system}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    separator="\n",
)

TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        ChatTemplate(
            name="default",
            description="readable ### System / ### User / ### Assistant blocks, ended by the tokenizer's EOS",
            bos=BOS,
            system="### System:\n{system}\n\n",
            user="### User:\n{content}\n\n",
            # A single newline before the answer: byte-level BPEs tokenize "\n\n" differently when
            # text follows it, which would break the prompt-is-a-prefix guarantee of encoding.
            assistant_prefix="### Assistant:\n",
            end_of_turn=EOS,
            separator="\n\n",
            stop_words=(EOS, "### User:"),
        ),
        ChatTemplate(
            name="chatml",
            description="ChatML (<|im_start|>role ... <|im_end|>), no default system prompt",
            stop_words=("<|im_end|>",),
            **_CHATML,
        ),
        ChatTemplate(
            name="qwen_chat",
            description="Qwen / Qwen2 ChatML with Qwen's default system prompt",
            default_system="You are a helpful assistant.",
            stop_words=("<|im_end|>", "<|endoftext|>"),
            **_CHATML,
        ),
        ChatTemplate(
            name="internlm_chat",
            description="InternLM (v1) chat: <|User|>:...<eoh> <|Bot|>:...<eoa>",
            bos="<s>",
            system="<|System|>:{system}\n",
            user="<|User|>:{content}<eoh>\n",
            assistant_prefix="<|Bot|>:",
            end_of_turn="<eoa>",
            separator="\n",
            stop_words=("<eoa>",),
        ),
        ChatTemplate(
            name="internlm2_chat",
            description="InternLM2 chat: <s> + ChatML",
            bos="<s>",
            stop_words=("<|im_end|>",),
            **_CHATML,
        ),
        ChatTemplate(
            name="llama2_chat",
            description="Llama 2 chat: <s>[INST] <<SYS>> ... <</SYS>> ... [/INST] answer </s>",
            user="<s>[INST] {content} [/INST]",
            user_with_system="<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]",
            answer=" {content} ",
            end_of_turn="</s>",
            stop_words=("</s>",),
        ),
        ChatTemplate(
            name="llama3_chat",
            description="Llama 3 instruct: <|start_header_id|>role<|end_header_id|> ... <|eot_id|>",
            bos="<|begin_of_text|>",
            system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant_prefix="<|start_header_id|>assistant<|end_header_id|>\n\n",
            end_of_turn="<|eot_id|>",
            stop_words=("<|eot_id|>", "<|end_of_text|>"),
        ),
    ]
}


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
        from tuner.data.tokenizer_template import from_tokenizer

        return from_tokenizer(tokenizer)
    if name == "tokenizer":
        raise TunerError("the tokenizer has no chat template; choose a named template")
    return get_template("default", tokenizer)
