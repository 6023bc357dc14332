"""Read every data format our users bring into the internal sample form.

A chat sample is ``{"messages": [{"role", "content"}, ...], "source": {"path", "line"}}`` with an
optional leading system message, user/assistant alternating after it and an assistant message
last; a pretraining sample is ``{"text": str, "source": ...}`` (see docs/ARCHITECTURE.md).

Bad records never stop a load and are never dropped silently: each becomes a :class:`DataError`
(file, line, field, what to do) in ``LoadResult.problems``, so that check-data can list all of them.
Only a file that cannot be read at all (missing, undecodable, empty, a broken JSON array) raises.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.core.errors import DataError
from tuner.data.anchors import ANCHOR, read_anchor_mark
from tuner.data.format_readers import (
    ASSISTANT,
    HUMAN,
    SHAREGPT_ROLES,
    json_type_name,
    read_alpaca,
    read_conversation,
    read_guanaco,
    read_openai,
    read_pretrain,
    read_sharegpt,
)
from tuner.data.msagent import EXEC_END, EXEC_START, THINK_END, THINK_START, read_msagent
from tuner.data.records import TEXT_SUFFIXES, Record, read_records
from tuner.data.sources import parse_source, read_source

# The readers, the file reading and the MS-Agent conversion live in their own modules; these names
# are re-exported so that callers keep importing everything about data formats from here.
__all__ = [
    "ALIASES",
    "ASSISTANT",
    "DETECT_SAMPLE",
    "EXEC_END",
    "EXEC_START",
    "FORMATS",
    "FORMAT_FIELDS",
    "HUMAN",
    "READERS",
    "SHAREGPT_ROLES",
    "TEXT_SUFFIXES",
    "THINK_END",
    "THINK_START",
    "LoadResult",
    "Record",
    "canonical_format",
    "detect_format",
    "load_samples",
    "read_records",
]

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

# How many records auto-detection looks at; enough to outvote a few odd records at the top.
DETECT_SAMPLE = 100


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


# ----------------------------------------------------------------------------- format names


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


READERS: dict[str, Callable[[Any], dict]] = {
    "conversation": read_conversation,
    "alpaca": read_alpaca,
    "openai": read_openai,
    "sharegpt": read_sharegpt,
    "guanaco": read_guanaco,
    "pretrain": read_pretrain,
    "msagent": read_msagent,
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
    raise DataError(f"each record must be a JSON object, got {json_type_name(record)}")


def _relocate(error: DataError, path: Path, line: int, *, rows: bool = False) -> DataError:
    """The reader's error, placed at the record's line (a file) or row (a table or data set)."""
    where = {"row": line} if rows else {"line": line}
    return DataError(error.message, path=path, field=error.field, hint=error.hint, **where)


def _vote(records: list[Record], path: Path, rows: bool = False) -> str:
    votes: Counter[str] = Counter()
    first_error = None
    for record in records[:DETECT_SAMPLE]:
        try:
            votes[detect_format(record.data)] += 1
        except DataError as exc:
            first_error = first_error or _relocate(exc, path, record.line, rows=rows)
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
        path: a .json (array), .jsonl or .txt file, a parquet / Arrow file, a ``datasets`` folder or a
            Hub data set id, with ``?split=&subset=&columns=`` options (tuner.data.sources).
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
    source = parse_source(path)
    path = source.path if source.kind != "hub" else Path(source.text.partition("?")[0])
    fmt = canonical_format(fmt)
    records, problems = read_source(source)
    texts = source.kind == "file" and path.suffix.lower() in TEXT_SUFFIXES
    if texts and fmt not in ("auto", "pretrain"):
        raise DataError(
            f"a plain-text file can only be read as pretrain, not {fmt}",
            path=path,
            hint="convert it to JSON Lines or use data format pretrain",
        )
    if fmt == "auto":
        fmt = _vote(records, path, source.rows) if records else "unknown"
    result = LoadResult(path=path, format=fmt, problems=problems, records=len(records) + len(problems))
    if not records:
        return result
    reader = READERS[fmt]
    for record in records:
        try:
            sample = reader(record.data)
            mark = read_anchor_mark(record.data)  # tuner.data.anchors: the base model's own answer
            if mark:
                sample[ANCHOR] = mark
        except DataError as exc:
            result.problems.append(_relocate(exc, path, record.line, rows=source.rows))
            continue
        messages = sample.get("messages")
        if system and messages is not None and messages[0]["role"] != "system":
            sample["messages"] = [{"role": "system", "content": system}, *messages]
        sample["source"] = {"path": str(path), ("row" if source.rows else "line"): record.line}
        result.samples.append(sample)
    result.problems.sort(key=lambda problem: problem.line or problem.row or 0)
    return result
