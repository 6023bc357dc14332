"""Atomic file writes and JSON Lines reading: a crash never leaves a half-written user file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from pathlib import Path

from tuner.errors import DataError, OutputExistsError


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, force: bool = True, encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    With ``force=False`` an existing ``path`` raises :class:`OutputExistsError` before anything is
    written, so the user's file is never touched.
    """
    path = Path(path)
    if not force and path.exists():
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if "b" in mode:
        encoding = None
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str, *, force: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", force=force) as handle:
        handle.write(text)
    return Path(path)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict], *, force: bool = True) -> int:
    """Write one JSON object per line, UTF-8 without escaping non-ASCII; returns the count.

    >>> # write_jsonl_atomic("out.jsonl", [{"a": "é"}]) writes the line {"a": "é"}
    """
    count = 0
    with atomic_open(path, "w", force=force) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON Lines file; blank lines are skipped, a bad line raises DataError with its line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"invalid JSON: {exc.msg}",
                    path=path,
                    line=number,
                    column=exc.colno,
                    hint="fix or delete this line",
                ) from None
    return records
