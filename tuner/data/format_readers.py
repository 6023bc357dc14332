"""One reader per chat/pretraining format: a raw record in, an internal-form sample out.

Also the field helpers they share (type-checked lookups, the turn-order check), which the
MS-Agent reader (:mod:`tuner.data.msagent`) uses too. Every reader raises :class:`DataError`
naming the bad field; :func:`tuner.data.formats.load_samples` adds the file and line.
"""

from __future__ import annotations

import re
from typing import Any

from tuner.core.errors import DataError

HUMAN, ASSISTANT = "### Human:", "### Assistant:"


# ----------------------------------------------------------------------------- field helpers


def json_type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def checked_field(
    obj: Any, key: str, kind: type | tuple[type, ...], where: str | None, *, required: bool = True
) -> Any:
    """``obj[key]`` checked for type; missing optional keys and nulls give None."""
    label = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise DataError(f"expected an object, got {json_type_name(obj)}", field=where)
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(f"missing {key!r}", field=label, hint=f"add {key!r} or delete the record")
        return None
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join("a string" if k is str else json_type_name(k()) for k in kinds)
        raise DataError(
            f"{key!r} must be {expected}, got {json_type_name(value)}",
            field=label,
            hint=f"make it {expected}",
        )
    return value


def _text(obj: Any, key: str, where: str | None, *, required: bool = True) -> str | None:
    """A string field; required ones must hold more than whitespace."""
    value = checked_field(obj, key, str, where, required=required)
    if required and not value.strip():
        label = f"{where}.{key}" if where else key
        raise DataError(f"empty {key!r}", field=label, hint="fill it in or delete the record")
    return value


def check_order(messages: list[dict], where: str) -> list[dict]:
    """Enforce the internal form: [system], user, assistant, user, assistant, ..."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise DataError("no user or assistant turns", field=where, hint="add a question and an answer")
    for index, message in enumerate(body):
        if message["role"] == "system":
            raise DataError(
                "a system message is only allowed first", field=where, hint="move it to the start"
            )
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(
                f"turn {index + 1} is {message['role']!r} but should be {expected!r}",
                field=where,
                hint="user and assistant turns must alternate, starting with the user",
            )
        if not message["content"].strip():
            raise DataError(f"empty {message['role']} turn {index + 1}", field=where, hint="fill it in")
    if body[-1]["role"] != "assistant":
        raise DataError(
            "the conversation ends with a user turn that has no output",
            field=where,
            hint="add the assistant's answer or delete the last turn",
        )
    return messages


def _chat(system: str | None, turns: list[tuple[str, str]]) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    return messages + [{"role": role, "content": content} for role, content in turns]


# ----------------------------------------------------------------------------- one reader per format


def read_conversation(record: dict) -> dict:
    turns = checked_field(record, "conversation", list, None)
    if not turns:
        raise DataError("empty conversation", field="conversation", hint="add at least one turn")
    system, messages = None, []
    for index, turn in enumerate(turns):
        where = f"conversation[{index}]"
        turn_system = _text(turn, "system", where, required=False)
        if turn_system and turn_system.strip():
            if index == 0:
                system = turn_system
            elif turn_system != system:
                # Our internal form has one leading system message; a new one mid-way is ambiguous.
                raise DataError(
                    "a different system text on a later turn",
                    field=f"{where}.system",
                    hint="put the system text on the first turn only",
                )
        messages.append(("user", _text(turn, "input", where)))
        messages.append(("assistant", _text(turn, "output", where)))
    return {"messages": _chat(system, messages)}


def read_alpaca(record: dict) -> dict:
    instruction = _text(record, "instruction", None)
    extra = _text(record, "input", None, required=False) or ""
    output = _text(record, "output", None)
    system = _text(record, "system", None, required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"messages": _chat(system, [("user", user), ("assistant", output)])}


def read_openai(record: dict) -> dict:
    items = checked_field(record, "messages", list, None)
    messages = []
    for index, item in enumerate(items):
        where = f"messages[{index}]"
        role = _text(item, "role", where).strip().lower()
        if role not in ("system", "user", "assistant"):
            raise DataError(
                f"unsupported role {role!r}", field=f"{where}.role", hint="use system, user or assistant"
            )
        content = checked_field(item, "content", str, where)
        messages.append({"role": role, "content": content})
    return {"messages": check_order(messages, "messages")}


SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
}


def from_value_list(items: list, where: str, roles: dict[str, str]) -> list[dict]:
    messages = []
    for index, item in enumerate(items):
        item_where = f"{where}[{index}]"
        source = _text(item, "from", item_where).strip().lower()
        if source not in roles:
            raise DataError(
                f"unsupported speaker {source!r}",
                field=f"{item_where}.from",
                hint="use " + ", ".join(sorted(roles)),
            )
        messages.append({"role": roles[source], "content": checked_field(item, "value", str, item_where)})
    return messages


def read_sharegpt(record: dict) -> dict:
    items = checked_field(record, "conversations", list, None)
    messages = from_value_list(items, "conversations", SHAREGPT_ROLES)
    return {"messages": check_order(messages, "conversations")}


_GUANACO_SPLIT = re.compile(f"({re.escape(HUMAN)}|{re.escape(ASSISTANT)})")


def read_guanaco(record: dict) -> dict:
    text = _text(record, "text", None)
    parts = _GUANACO_SPLIT.split(text)
    if parts[0].strip():
        raise DataError(
            f"text before the first {HUMAN!r}", field="text", hint=f"start the text with {HUMAN!r}"
        )
    messages = []
    for marker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if marker == HUMAN else "assistant"
        messages.append({"role": role, "content": content.strip()})
    if not messages:
        raise DataError(f"no {HUMAN!r} / {ASSISTANT!r} markers", field="text")
    return {"messages": check_order(messages, "text")}


def read_pretrain(record: Any) -> dict:
    if isinstance(record, str):  # a document of a .txt file
        return {"text": record}
    return {"text": _text(record, "text", None)}
