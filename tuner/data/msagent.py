"""Read MS-Agent records: tool-call markers become ReAct steps (:mod:`tuner.data.react`)."""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from tuner.core.errors import DataError
from tuner.data import react
from tuner.data.format_readers import (
    SHAREGPT_ROLES,
    check_order,
    checked_field,
    from_value_list,
    json_type_name,
)

THINK_START, THINK_END = "<|startofthink|>", "<|endofthink|>"
EXEC_START, EXEC_END = "<|startofexec|>", "<|endofexec|>"


def _parse_literal_list(value: str) -> Any:
    """MS-Agent stores a Python-literal list in a string; parse it safely (never eval)."""
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise DataError(
            "cannot parse the string as a list of {'from', 'value'} dicts",
            field="conversations",
            hint="it must be a Python or JSON list literal",
        ) from None


_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*(.*?)\s*```\s*$", re.DOTALL)
_AGENT_TOKENS = re.compile(
    re.escape(THINK_START) + "(?P<call>.*?)" + re.escape(THINK_END)
    + "|" + re.escape(EXEC_START) + "(?P<result>.*?)" + re.escape(EXEC_END),
    re.DOTALL,
)  # fmt: skip


def _unfence(text: str) -> str:
    match = _FENCE.match(text)
    return (match.group(1) if match else text).strip()


def _tools_from_system(text: str) -> list[react.Tool]:
    """Tool definitions are JSON objects, one per line, in the MS-Agent system message."""
    tools = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            spec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(spec, dict) or not spec.get("name"):
            continue
        params = spec.get("parameters")
        paths = spec.get("paths")
        if params is None and isinstance(paths, list) and paths and isinstance(paths[0], dict):
            params = paths[0].get("parameters")
        params = [p for p in params if isinstance(p, dict)] if isinstance(params, list) else []
        tools.append(react.Tool(str(spec["name"]), str(spec.get("description", "")), params))
    return tools


def _agent_turns(value: str, where: str, used: list[str]) -> list[dict]:
    """Split one MS-Agent assistant value into ReAct assistant steps and Response user turns."""
    out: list[dict] = []
    thought, calling, called = "", None, False
    pos = 0
    for match in _AGENT_TOKENS.finditer(value):
        thought += value[pos : match.start()]
        pos = match.end()
        if match.group("call") is not None:
            if calling:
                raise DataError("two tool calls without a tool result between them", field=where)
            try:
                call = json.loads(_unfence(match.group("call")))
            except json.JSONDecodeError as exc:
                raise DataError(f"the tool call is not valid JSON: {exc.msg}", field=where) from None
            if not isinstance(call, dict) or not isinstance(call.get("api_name"), str):
                raise DataError("the tool call has no 'api_name'", field=where)
            calling = call["api_name"]
            used.append(calling)
            step_thought = thought.strip() or f"I need to use {calling}."
            out.append(
                {
                    "role": "assistant",
                    "content": react.format_action(step_thought, calling, call.get("parameters", {})),
                }
            )
            thought = ""
        else:
            if not calling:
                raise DataError("a tool result without a tool call before it", field=where)
            if thought.strip():
                raise DataError("text between a tool call and its result", field=where)
            out.append({"role": "user", "content": react.format_response(_unfence(match.group("result")))})
            calling, called = None, True
    answer = (thought + value[pos:]).strip()
    if calling:
        if answer:
            raise DataError("a tool call without its result before the answer", field=where)
        return out  # the turn ends with the tool call; the next user turn must bring the result
    if not answer:
        raise DataError(
            "no final answer after the tool result" if called else "empty assistant turn", field=where
        )
    out.append(
        {
            "role": "assistant",
            "content": react.format_final(react.FINAL_THOUGHT if called else react.DIRECT_THOUGHT, answer),
        }
    )
    return out


def read_msagent(record: dict) -> dict:
    value = checked_field(record, "conversations", (str, list), None)
    items = _parse_literal_list(value) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise DataError(f"expected a list, got {json_type_name(items)}", field="conversations")
    raw = from_value_list(items, "conversations", SHAREGPT_ROLES)
    system_text, tools, used, messages = None, [], [], []
    for index, message in enumerate(raw):
        where = f"conversations[{index}]"
        if message["role"] == "system":
            if index != 0:
                raise DataError("a system message is only allowed first", field=where)
            system_text = message["content"]
            tools = _tools_from_system(system_text)
        elif message["role"] == "assistant":
            messages.extend(_agent_turns(message["content"], where, used))
        else:
            messages.append(message)
    known = {tool.name for tool in tools}
    for name in dict.fromkeys(used):  # tools called but not described still get listed
        if name not in known:
            tools.append(react.Tool(name))
    if tools:
        system_text = react.build_system_prompt(tools)
    result = ([{"role": "system", "content": system_text}] if system_text else []) + messages
    return {"messages": check_order(result, "conversations")}
