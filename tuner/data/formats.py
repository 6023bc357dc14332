"""Read every data format our users bring into the internal sample form.

A chat sample is ``{"messages": [{"role", "content"}, ...], "source": {"path", "line"}}`` with an
optional leading system message, user/assistant alternating after it and an assistant message
last; a pretraining sample is ``{"text": str, "source": ...}`` (see docs/ARCHITECTURE.md).

Bad records never stop a load and are never dropped silently: each becomes a :class:`DataError`
(file, line, field, what to do) in ``LoadResult.problems``, so that check-data can list all of them.
Only a file that cannot be read at all (missing, undecodable, empty, a broken JSON array) raises.
"""

from __future__ import annotations

import ast
import bisect
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.data import react
from tuner.errors import DataError

FORMATS = ("conversation", "alpaca", "openai", "sharegpt", "guanaco", "pretrain", "msagent")

# The fields that identify each format, for messages that tell the user what we expected.
FORMAT_FIELDS = {
    "conversation": '{"conversation": [{"system", "input", "output"}, ...]}',
    "alpaca": '{"instruction", "input", "output"}',
    "openai": '{"messages": [{"role", "content"}, ...]}',
    "sharegpt": '{"conversations": [{"from", "value"}, ...]}',
    "guanaco": '{"text": "### Human: ...### Assistant: ..."}',
    "pretrain": '{"text": "..."} lines or a .txt file',
    "msagent": "{\"conversations\": \"[{'from': ..., 'value': ...}, ...]\"}",
}

# Other names users know these formats by.
ALIASES = {
    "xtuner": "conversation",
    "messages": "openai",
    "oasst1": "guanaco",
    "openassistant": "guanaco",
    "text": "pretrain",
    "ms-agent": "msagent",
    "ms_agent": "msagent",
}

TEXT_SUFFIXES = {".txt", ".text", ".md"}
# How many records auto-detection looks at; enough to outvote a few odd records at the top.
DETECT_SAMPLE = 100
HUMAN, ASSISTANT = "### Human:", "### Assistant:"
THINK_START, THINK_END = "<|startofthink|>", "<|endofthink|>"
EXEC_START, EXEC_END = "<|startofexec|>", "<|endofexec|>"


@dataclass
class Record:
    """One raw record and the line it starts on (a str for plain-text documents)."""

    line: int
    data: Any


@dataclass
class LoadResult:
    """What :func:`load_samples` found: good samples, the format, and every bad record."""

    path: Path
    format: str
    samples: list[dict] = field(default_factory=list)
    problems: list[DataError] = field(default_factory=list)
    records: int = 0

    def raise_for_problems(self, limit: int = 5) -> None:
        """Raise one DataError summarising the problems (or an empty result); for strict callers."""
        if not self.problems and self.samples:
            return
        if not self.problems:
            raise DataError("no usable samples", path=self.path, hint="check the file's format")
        if len(self.problems) == 1:
            raise self.problems[0]
        shown = "\n".join(f"  - {p}" for p in self.problems[:limit])
        more = f"\n  ... and {len(self.problems) - limit} more" if len(self.problems) > limit else ""
        raise DataError(
            f"{len(self.problems)} bad records of {self.records}:\n{shown}{more}",
            path=self.path,
            hint="fix or delete them; `python -m tuner check-data` lists them all",
        )


# ----------------------------------------------------------------------------- reading files


def canonical_format(fmt: str | None) -> str:
    """Normalise a format name (aliases allowed); unknown names raise DataError listing known ones.

    Example:
        >>> canonical_format("oasst1")
        'guanaco'
    """
    name = (fmt or "auto").strip().lower()
    name = ALIASES.get(name, name)
    if name != "auto" and name not in FORMATS:
        raise DataError(
            f"unknown data format {fmt!r}",
            hint="known formats: auto, " + ", ".join(FORMATS),
        )
    return name


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path=path, hint="check the path") from None
    except IsADirectoryError:
        raise DataError("is a folder, not a data file", path=path, hint="choose a file") from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror}", path=path) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            "not valid UTF-8 text",
            path=path,
            line=line,
            hint="save the file as UTF-8 (for tables, `python -m tuner convert` also reads GBK)",
        ) from None


def _line_finder(text: str) -> Callable[[int], tuple[int, int]]:
    """Map a character offset to (line, column), both 1-based."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def locate(offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(starts, offset) - 1
        return index + 1, offset - starts[index] + 1

    return locate


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_json_array(text: str, path: Path) -> list[Record]:
    """Parse a JSON array element by element, so that each record knows the line it starts on."""
    decoder = json.JSONDecoder()
    locate = _line_finder(text)

    def broken(msg: str, pos: int) -> DataError:
        line, col = locate(pos)
        return DataError(f"invalid JSON: {msg}", path=path, line=line, column=col, hint="fix the JSON syntax")

    records = []
    pos = _skip_ws(text, 0) + 1  # past "["
    pos = _skip_ws(text, pos)
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise broken(exc.msg, exc.pos) from None
            records.append(Record(locate(pos)[0], value))
            pos = _skip_ws(text, end)
            if pos < len(text) and text[pos] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            raise broken("expected ',' or ']' after a record", pos)
    if _skip_ws(text, pos) != len(text):
        raise broken("extra data after the closing ']'", _skip_ws(text, pos))
    return records


def _read_jsonl(text: str, path: Path) -> tuple[list[Record], list[DataError]]:
    records, problems = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record(number, json.loads(line)))
        except json.JSONDecodeError as exc:
            problems.append(
                DataError(
                    f"invalid JSON: {exc.msg}",
                    path=path,
                    line=number,
                    column=exc.colno,
                    hint="fix or delete this line",
                )
            )
    if problems and not records:
        # A pretty-printed single object is not JSON Lines but is still one valid record.
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return records, problems
        first = len(text) - len(text.lstrip())
        return [Record(text[:first].count("\n") + 1, value)], []
    return records, problems


def _read_text_documents(text: str) -> list[Record]:
    """Documents of a plain-text file are separated by one or more blank lines."""
    records, lines, start = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
        elif lines:
            records.append(Record(start, "\n".join(lines)))
            lines = []
    if lines:
        records.append(Record(start, "\n".join(lines)))
    return records


def read_records(path: str | Path) -> tuple[list[Record], list[DataError]]:
    """Read a JSON array, JSON Lines or plain-text file into raw records with their line numbers.

    Bad JSON Lines lines are returned as problems; a file that cannot be read at all raises.

    Example:
        >>> # a.jsonl holding '{"text": "hi"}\\n\\n{"text": "yo"}\\n'
        >>> # read_records("a.jsonl") -> ([Record(1, {"text": "hi"}), Record(3, {"text": "yo"})], [])
    """
    path = Path(path)
    text = _decode(path)
    if not text.strip():
        raise DataError("empty file", path=path, hint="add records or choose another file")
    if path.suffix.lower() in TEXT_SUFFIXES:
        return _read_text_documents(text), []
    first = text.lstrip()[0]
    if first == "[":
        records, problems = _read_json_array(text, path), []
    elif first == "{":
        records, problems = _read_jsonl(text, path)
    else:
        line = text[: len(text) - len(text.lstrip())].count("\n") + 1
        raise DataError(
            "not a JSON array or JSON Lines file",
            path=path,
            line=line,
            hint="use .json/.jsonl records, or a .txt file for plain pretraining text",
        )
    if not records and not problems:
        raise DataError("empty file: the JSON array has no records", path=path, hint="add records")
    return records, problems


# ----------------------------------------------------------------------------- field helpers


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _get(
    obj: Any, key: str, kind: type | tuple[type, ...], where: str | None, *, required: bool = True
) -> Any:
    """``obj[key]`` checked for type; missing optional keys and nulls give None."""
    label = f"{where}.{key}" if where else key
    if not isinstance(obj, dict):
        raise DataError(f"expected an object, got {_type_name(obj)}", field=where)
    value = obj.get(key)
    if value is None:
        if required:
            raise DataError(f"missing {key!r}", field=label, hint=f"add {key!r} or delete the record")
        return None
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        expected = " or ".join("a string" if k is str else _type_name(k()) for k in kinds)
        raise DataError(
            f"{key!r} must be {expected}, got {_type_name(value)}",
            field=label,
            hint=f"make it {expected}",
        )
    return value


def _text(obj: Any, key: str, where: str | None, *, required: bool = True) -> str | None:
    """A string field; required ones must hold more than whitespace."""
    value = _get(obj, key, str, where, required=required)
    if required and not value.strip():
        label = f"{where}.{key}" if where else key
        raise DataError(f"empty {key!r}", field=label, hint="fill it in or delete the record")
    return value


def _check_order(messages: list[dict], where: str) -> list[dict]:
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


def _read_conversation(record: dict) -> dict:
    turns = _get(record, "conversation", list, None)
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


def _read_alpaca(record: dict) -> dict:
    instruction = _text(record, "instruction", None)
    extra = _text(record, "input", None, required=False) or ""
    output = _text(record, "output", None)
    system = _text(record, "system", None, required=False)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {"messages": _chat(system, [("user", user), ("assistant", output)])}


def _read_openai(record: dict) -> dict:
    items = _get(record, "messages", list, None)
    messages = []
    for index, item in enumerate(items):
        where = f"messages[{index}]"
        role = _text(item, "role", where).strip().lower()
        if role not in ("system", "user", "assistant"):
            raise DataError(
                f"unsupported role {role!r}", field=f"{where}.role", hint="use system, user or assistant"
            )
        content = _get(item, "content", str, where)
        messages.append({"role": role, "content": content})
    return {"messages": _check_order(messages, "messages")}


SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
}


def _from_value_list(items: list, where: str, roles: dict[str, str]) -> list[dict]:
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
        messages.append({"role": roles[source], "content": _get(item, "value", str, item_where)})
    return messages


def _read_sharegpt(record: dict) -> dict:
    items = _get(record, "conversations", list, None)
    messages = _from_value_list(items, "conversations", SHAREGPT_ROLES)
    return {"messages": _check_order(messages, "conversations")}


_GUANACO_SPLIT = re.compile(f"({re.escape(HUMAN)}|{re.escape(ASSISTANT)})")


def _read_guanaco(record: dict) -> dict:
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
    return {"messages": _check_order(messages, "text")}


def _read_pretrain(record: Any) -> dict:
    if isinstance(record, str):  # a document of a .txt file
        return {"text": record}
    return {"text": _text(record, "text", None)}


# ----------------------------------------------------------------------------- MS-Agent


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


def _read_msagent(record: dict) -> dict:
    value = _get(record, "conversations", (str, list), None)
    items = _parse_literal_list(value) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise DataError(f"expected a list, got {_type_name(items)}", field="conversations")
    raw = _from_value_list(items, "conversations", SHAREGPT_ROLES)
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
    return {"messages": _check_order(result, "conversations")}


READERS: dict[str, Callable[[Any], dict]] = {
    "conversation": _read_conversation,
    "alpaca": _read_alpaca,
    "openai": _read_openai,
    "sharegpt": _read_sharegpt,
    "guanaco": _read_guanaco,
    "pretrain": _read_pretrain,
    "msagent": _read_msagent,
}


# ----------------------------------------------------------------------------- detection and loading


def detect_format(record: Any) -> str:
    """Name the format of one raw record; DataError when no known format fits.

    Example:
        >>> detect_format({"instruction": "Say hi", "input": "", "output": "Hi"})
        'alpaca'
        >>> detect_format({"text": "### Human: Hi### Assistant: Hello"})
        'guanaco'
    """
    if isinstance(record, str):
        return "pretrain"
    if isinstance(record, dict):
        if "conversation" in record:
            return "conversation"
        if "messages" in record:
            return "openai"
        if "conversations" in record:
            value = record["conversations"]
            if isinstance(value, str) or THINK_START in json.dumps(value, ensure_ascii=False):
                return "msagent"
            return "sharegpt"
        if "instruction" in record and "output" in record:
            return "alpaca"
        if "text" in record:
            text = record["text"]
            if isinstance(text, str) and HUMAN in text and ASSISTANT in text:
                return "guanaco"
            return "pretrain"
        found = ", ".join(repr(key) for key in list(record)[:8]) or "none"
        raise DataError(
            f"unknown format (fields: {found})",
            hint="expected one of: " + "; ".join(f"{k} {v}" for k, v in FORMAT_FIELDS.items()),
        )
    raise DataError(f"each record must be a JSON object, got {_type_name(record)}")


def _relocate(error: DataError, path: Path, line: int) -> DataError:
    return DataError(error.message, path=path, line=line, field=error.field, hint=error.hint)


def _vote(records: list[Record], path: Path) -> str:
    votes: Counter[str] = Counter()
    first_error = None
    for record in records[:DETECT_SAMPLE]:
        try:
            votes[detect_format(record.data)] += 1
        except DataError as exc:
            first_error = first_error or _relocate(exc, path, record.line)
    if not votes:
        raise first_error  # type: ignore[misc]
    # List-form MS-Agent records without tool calls look like sharegpt; the MS-Agent reader reads
    # those identically, so one record with tool markers decides for the whole file.
    if "msagent" in votes and set(votes) <= {"msagent", "sharegpt"}:
        return "msagent"
    return votes.most_common(1)[0][0]


def load_samples(path: str | Path, fmt: str = "auto", *, system: str | None = None) -> LoadResult:
    """Read a data file of any supported format into samples, collecting every bad record.

    Args:
        path: a .json (array), .jsonl or .txt file.
        fmt: one of FORMATS (or an alias), or "auto" to detect it from the records.
        system: system text for chat samples that have none.

    Example:
        >>> # alpaca.jsonl: {"instruction": "Name a colour.", "input": "", "output": "Red."}
        >>> # load_samples("alpaca.jsonl").samples[0]["messages"] ->
        >>> #   [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]

    Raises:
        DataError: the file cannot be read at all, the format name is unknown, or no record
            matches any known format (with ``fmt="auto"``).
    """
    path = Path(path)
    fmt = canonical_format(fmt)
    records, problems = read_records(path)
    texts = path.suffix.lower() in TEXT_SUFFIXES
    if texts and fmt not in ("auto", "pretrain"):
        raise DataError(
            f"a plain-text file can only be read as pretrain, not {fmt}",
            path=path,
            hint="convert it to JSON Lines or use data format pretrain",
        )
    if fmt == "auto":
        fmt = _vote(records, path) if records else "unknown"
    result = LoadResult(path=path, format=fmt, problems=problems, records=len(records) + len(problems))
    if not records:
        return result
    reader = READERS[fmt]
    for record in records:
        try:
            sample = reader(record.data)
        except DataError as exc:
            result.problems.append(_relocate(exc, path, record.line))
            continue
        messages = sample.get("messages")
        if system and messages is not None and messages[0]["role"] != "system":
            sample["messages"] = [{"role": "system", "content": system}, *messages]
        sample["source"] = {"path": str(path), "line": record.line}
        result.samples.append(sample)
    result.problems.sort(key=lambda problem: problem.line or 0)
    return result
