"""Turn a question/answer table (xlsx, csv/tsv, JSON, JSON Lines) into conversation JSON Lines.

One row becomes one record ``{"conversation": [{"system": ..., "input": question, "output": answer}]}``.
Rows lacking a question or an answer are skipped and reported with the row number the user sees in
a spreadsheet program (the header is row 1); for JSON input the number is the file's line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.core.errors import DataError, OutputExistsError
from tuner.core.io import write_jsonl_atomic

# Reading tables lives in tuner.data.tables; re-exported so callers keep importing it from here.
from tuner.data.tables import cell_text, column_letter, letter_index, read_table

# Header names tried when the user names no column (lower case).
QUESTION_NAMES = (
    "question",
    "questions",
    "q",
    "input",
    "instruction",
    "prompt",
    "query",
    "问题",
    "提问",
    "输入",
)
ANSWER_NAMES = ("answer", "answers", "a", "output", "response", "reply", "答案", "回答", "输出")


@dataclass
class ConvertResult:
    """What :func:`convert_table` did."""

    input: Path
    output: Path
    question_column: str
    answer_column: str
    rows_read: int
    rows_written: int
    skipped: list[tuple[int, str]]  # (row number, reason)
    unit: str = "row"
    sheet: str | None = None
    encoding: str | None = None
    hidden: list[int] = field(default_factory=list)  # hidden spreadsheet rows that were converted

    @property
    def skipped_rows(self) -> list[int]:
        return [number for number, _ in self.skipped]

    def summary(self) -> str:
        """Lines for the CLI and the app."""
        source = f"{self.input}" + (f" (sheet {self.sheet})" if self.sheet else "")
        if self.encoding:
            source += f" ({self.encoding})"
        lines = [
            f"read {self.rows_read} {self.unit}s from {source}",
            f"question column: {self.question_column}; answer column: {self.answer_column}",
            f"wrote {self.rows_written} conversations to {self.output}",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} {self.unit}s:")
            lines += [f"  {self.unit} {number}: {reason}" for number, reason in self.skipped]
        else:
            lines.append(f"skipped 0 {self.unit}s")
        if self.hidden:
            shown = ", ".join(str(n) for n in self.hidden[:20]) + (" ..." if len(self.hidden) > 20 else "")
            lines.append(
                f"note: {len(self.hidden)} hidden row(s) were converted like the others ({shown}); "
                "delete them from the sheet if they are not meant as training data"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- converting


def _describe_columns(columns: list[str]) -> str:
    return ", ".join(
        f"{column_letter(i)} {name!r}" if name != column_letter(i) else name for i, name in enumerate(columns)
    )


def resolve_column(
    columns: list[str], spec: str, *, path: Path, option: str, sheet: str | None = None
) -> int:
    """Index of a column named by its header (case-insensitive) or its letter ("A", "B", ...)."""
    if spec in columns:
        return columns.index(spec)
    folded = [i for i, name in enumerate(columns) if name.strip().lower() == spec.strip().lower()]
    if folded:
        return folded[0]
    if re.fullmatch(r"[A-Za-z]{1,3}", spec.strip()):
        index = letter_index(spec.strip())
        if index < len(columns):
            return index
    where = f" in sheet {sheet!r}" if sheet else ""
    raise DataError(
        f"no column {spec!r}{where}; the columns are: {_describe_columns(columns)}",
        path=path,
        hint=f"pass {option} with a header name or a column letter",
    )


def _guess_column(columns: list[str], names: tuple[str, ...], *, path: Path, option: str) -> int:
    folded = [name.strip().lower() for name in columns]
    for candidate in names:
        if candidate in folded:
            return folded.index(candidate)
    raise DataError(
        f"which column holds the {option.strip('-')}? the columns are: {_describe_columns(columns)}",
        path=path,
        hint=f"pass {option} with a header name or a column letter",
    )


def convert_table(
    input_path: str | Path,
    output_path: str | Path,
    *,
    sheet: str | None = None,
    question: str | None = None,
    answer: str | None = None,
    system: str | None = None,
    system_column: str | None = None,
    force: bool = False,
) -> ConvertResult:
    """Convert a question/answer table into conversation JSON Lines.

    Args:
        question, answer, system_column: a header name or a column letter; without question or
            answer, a column named like "Question"/"Answer"/"input"/"output" is used.
        system: system text for every row (a non-empty ``system_column`` cell wins).
        force: overwrite an existing output file.

    Example:
        >>> # qa.csv: "Question,Answer\\nHi?,Hello\\n,orphan answer\\n"
        >>> # convert_table("qa.csv", "qa.jsonl", system="Be brief.") writes
        >>> #   {"conversation": [{"system": "Be brief.", "input": "Hi?", "output": "Hello"}]}
        >>> # and reports rows_read=2, rows_written=1, skipped=[(3, "empty question")]
    """
    source, output = Path(input_path), Path(output_path)
    if output.exists() and not force:
        raise OutputExistsError(output)
    if output.resolve() == source.resolve():
        raise DataError("the output file is the input file", path=output, hint="choose another output name")
    table = read_table(source, sheet)
    columns = table.columns
    options = {"path": source, "sheet": table.sheet}
    q = (
        resolve_column(columns, question, option="--question", **options)
        if question
        else _guess_column(columns, QUESTION_NAMES, path=source, option="--question")
    )
    a = (
        resolve_column(columns, answer, option="--answer", **options)
        if answer
        else _guess_column(columns, ANSWER_NAMES, path=source, option="--answer")
    )
    s = resolve_column(columns, system_column, option="--system-column", **options) if system_column else None
    if q == a:
        raise DataError(f"the question and answer column are the same ({columns[q]!r})", path=source)

    def cell(values: list[Any], index: int) -> str:
        return cell_text(values[index]).strip() if index < len(values) else ""

    records, skipped, read = [], list(table.bad_rows), 0
    for number, values in table.rows:
        if all(cell_text(v).strip() == "" for v in values):
            continue  # blank rows (often trailing formatting) are not data
        read += 1
        q_text, a_text = cell(values, q), cell(values, a)
        if not q_text or not a_text:
            formulas = [n for n, i in (("question", q), ("answer", a)) if (number, i) in table.uncomputed]
            if formulas:  # not empty: a formula the program that wrote the file never computed
                skipped.append(
                    (
                        number,
                        f"{' and '.join(formulas)} is a formula with no saved value "
                        f"(open the file in Excel or LibreOffice and save it, so the values are stored)",
                    )
                )
                continue
            missing = " and ".join(n for n, t in (("question", q_text), ("answer", a_text)) if not t)
            skipped.append((number, f"empty {missing}"))
            continue
        turn = {}
        row_system = (cell(values, s) if s is not None else "") or (system or "").strip()
        if row_system:
            turn["system"] = row_system
        turn["input"], turn["output"] = q_text, a_text
        records.append({"conversation": [turn]})
    skipped.sort()
    if not records:
        what = "no data rows below the header" if not read else "no row has both a question and an answer"
        raise DataError(what, path=source, hint="check the --question and --answer columns")
    written = write_jsonl_atomic(output, records, force=force)
    return ConvertResult(
        input=source,
        output=output,
        question_column=columns[q],
        answer_column=columns[a],
        rows_read=read + len(table.bad_rows),
        rows_written=written,
        skipped=skipped,
        unit=table.unit,
        sheet=table.sheet,
        encoding=table.encoding,
        hidden=[n for n in table.hidden_rows if n not in {number for number, _ in skipped}],
    )
