"""Random train/test split of a JSON Lines or JSON array file, reproducible by seed.

Records are kept verbatim (JSON Lines lines are copied byte for byte) and keep their original
order inside each part; every record lands in exactly one part.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from tuner.core.errors import DataError, OutputExistsError
from tuner.core.io import atomic_files
from tuner.data.records import read_records


@dataclass
class SplitResult:
    """Where the parts went and how many records each holds."""

    train_path: Path
    test_path: Path
    train_count: int
    test_count: int

    @property
    def total(self) -> int:
        return self.train_count + self.test_count

    def summary(self) -> str:
        return (
            f"split {self.total} records: {self.train_count} -> {self.train_path}, "
            f"{self.test_count} -> {self.test_path}"
        )


def _read_lines(path: Path) -> list[str]:
    """One JSON text per record: JSONL lines as they are, array elements re-serialised."""

    records, problems = read_records(path)  # raises for missing, empty or undecodable files
    if problems:
        raise DataError(
            problems[0].message,
            path=path,
            line=problems[0].line,
            column=problems[0].column,
            hint=f"{len(problems)} bad line(s); fix them before splitting",
        )
    if records and isinstance(records[0].data, str):
        raise DataError(
            "a plain-text file cannot be split", path=path, hint="split JSON or JSON Lines records"
        )
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        return [json.dumps(record.data, ensure_ascii=False) for record in records]
    lines = text.split("\n")
    return [lines[record.line - 1].rstrip("\r") for record in records]


def split_file(
    path: str | Path,
    test_ratio: float = 0.3,
    seed: int = 0,
    train_out: str | Path | None = None,
    test_out: str | Path | None = None,
    force: bool = False,
) -> SplitResult:
    """Split records at random into a train and a test JSON Lines file.

    The test part holds ``round(n * test_ratio)`` records, at least one of each part. The same
    seed always gives the same files.

    Example:
        >>> # data.jsonl with 10 records -> split_file("data.jsonl") writes
        >>> # data-train.jsonl (7 records) and data-test.jsonl (3 records) beside it
    """
    path = Path(path)
    if not 0 < test_ratio < 1:
        raise DataError(f"test ratio must be between 0 and 1, got {test_ratio}", hint="e.g. 0.3 for 7:3")
    train_path = Path(train_out) if train_out else path.with_name(f"{path.stem}-train.jsonl")
    test_path = Path(test_out) if test_out else path.with_name(f"{path.stem}-test.jsonl")
    resolved = {path.resolve(), train_path.resolve(), test_path.resolve()}
    if len(resolved) != 3:
        raise DataError("the input, train and test files must be three different files", path=path)
    # Check both outputs before writing either, so a refusal leaves no half-done split behind.
    for out in (train_path, test_path):
        if out.exists() and not force:
            raise OutputExistsError(out)
    lines = _read_lines(path)
    if len(lines) < 2:
        raise DataError(f"only {len(lines)} record", path=path, hint="a split needs at least 2 records")
    n_test = min(max(round(len(lines) * test_ratio), 1), len(lines) - 1)
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    test_ids = set(order[:n_test])
    # Both parts or neither: a disk that fills up after one part must not leave it in the rerun's way.
    with atomic_files([train_path, test_path], force=force) as (train, test):
        for index, line in enumerate(lines):
            (test if index in test_ids else train).write(line + "\n")
    return SplitResult(train_path, test_path, len(lines) - n_test, n_test)
