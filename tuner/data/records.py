"""Read a data file into raw records, each with the line it starts on.

A file is a JSON array, JSON Lines, or plain text (documents separated by blank lines). Bad JSON
Lines lines come back as :class:`DataError` problems; a file that cannot be read at all raises.
What the records mean is the format readers' job (:mod:`tuner.data.format_readers`).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.core.errors import DataError

TEXT_SUFFIXES = {".txt", ".text", ".md"}


@dataclass
class Record:
    """One raw record and the line it starts on (a str for plain-text documents)."""

    line: int
    data: Any


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
