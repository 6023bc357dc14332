"""Read a table (xlsx, csv/tsv, JSON, JSON Lines) as a header plus numbered rows of raw cell values.

Rows keep the number the user sees in a spreadsheet program (the header is row 1); for JSON input the
number is the file's line. :mod:`tuner.data.convert` turns such a table into conversation JSON Lines.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import decimal
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.core.errors import DataError
from tuner.data.records import read_records

EXCEL_SUFFIXES = {".xlsx", ".xlsm"}
CSV_SUFFIXES = {".csv", ".tsv", ".tab", ".txt"}
JSON_SUFFIXES = {".json", ".jsonl"}
SUPPORTED = ".xlsx, .csv, .tsv, .json, .jsonl"
# Encrypted (password-protected) and legacy .xls workbooks are OLE2 compound files, not zip files.
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
OLE_ENCRYPTED = "EncryptedPackage".encode("utf-16-le")
DELIMITERS = ",\t;|"


@dataclass
class Table:
    """Rows of a table as raw cell values, each with the number the user knows it by."""

    columns: list[str]
    rows: list[tuple[int, list[Any]]]
    unit: str = "row"  # "row" for spreadsheets and csv, "line" for JSON
    sheet: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # unreadable JSON lines
    # Spreadsheets only: cells holding a formula whose value was never saved (row, column index), and
    # hidden rows. Both read as something else (an empty cell, an ordinary row) unless said.
    uncomputed: set[tuple[int, int]] = field(default_factory=set)
    hidden_rows: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- cells


def cell_text(value: Any) -> str:
    """Any cell value as the text the user expects to see.

    Example:
        >>> [cell_text(v) for v in (None, 3, 3.0, 2.5, 0.1 + 0.2, dt.datetime(2024, 5, 1), True)]
        ['', '3', '3', '2.5', '0.3', '2024-05-01', 'TRUE']
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # Spreadsheets store every number as a float: 3 must stay "3", and 0.1 + 0.2 must read "0.3".
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat(timespec="seconds" if not value.microsecond else "auto")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def column_letter(index: int) -> str:
    """0 -> "A", 25 -> "Z", 26 -> "AA"."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def letter_index(letters: str) -> int:
    index = 0
    for char in letters.upper():
        index = index * 26 + ord(char) - 64
    return index - 1


def _header(values: list[Any]) -> list[str]:
    names = [cell_text(v).strip() for v in values]
    while names and not names[-1]:
        names.pop()
    # A blank header cell is still a column the user can pick by its letter.
    return [name or column_letter(i) for i, name in enumerate(names)]


# ----------------------------------------------------------------------------- reading tables


def _excel_error(path: Path) -> DataError | None:
    """Explain files that look like Excel but openpyxl cannot read."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        return DataError("empty file", path=path, hint="choose a spreadsheet that has data")
    if head == OLE_MAGIC:
        if OLE_ENCRYPTED in path.read_bytes():
            return DataError(
                "the workbook is password-protected",
                path=path,
                hint="open it in Excel or LibreOffice, remove the password and save it as .xlsx",
            )
        return DataError(
            "old Excel .xls format", path=path, hint="open it in Excel or LibreOffice and save it as .xlsx"
        )
    return None


def _open_workbook(path: Path):
    import openpyxl

    problem = _excel_error(path)
    if problem:
        raise problem
    try:
        # data_only: formulas give the value Excel cached on save, not the formula text.
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types (BadZipFile, KeyError, ValueError...)
        kind = "not a zip archive" if isinstance(exc, zipfile.BadZipFile) else type(exc).__name__
        raise DataError(
            f"not a readable .xlsx workbook ({kind}); the file is corrupt or not a spreadsheet",
            path=path,
            hint="open it in Excel or LibreOffice and save it again as .xlsx",
        ) from None


def _pick_sheet(workbook, sheet: str | None, path: Path):
    names = workbook.sheetnames
    if sheet is None:
        return names[0]
    if sheet in names:
        return sheet
    folded = [name for name in names if name.strip().lower() == sheet.strip().lower()]
    if folded:
        return folded[0]
    raise DataError(
        f"no sheet {sheet!r}",
        path=path,
        hint="the sheets are: " + ", ".join(repr(name) for name in names),
    )


def _read_excel(path: Path, sheet: str | None, limit: int | None) -> Table:
    workbook = _open_workbook(path)
    try:
        name = _pick_sheet(workbook, sheet, path)
        rows = workbook[name].iter_rows(values_only=True)
        header = next(rows, None)
        columns = _header(list(header or []))
        if not columns:
            raise DataError(
                f"sheet {name!r} is empty (no header in row 1)",
                path=path,
                hint="put the column names in row 1 and the data below",
            )
        table = Table(columns, [], sheet=name)
        for number, values in enumerate(rows, start=2):
            if limit is not None and len(table.rows) >= limit:
                break
            table.rows.append((number, list(values)))
    finally:
        workbook.close()
    if limit is None:  # a whole read (a conversion): what the cached values alone do not show
        table.uncomputed, table.hidden_rows = _sheet_facts(path, name, table)
    return table


def _sheet_facts(path: Path, name: str, table: Table) -> tuple[set[tuple[int, int]], list[int]]:
    """Formula cells with no saved value (a file written by a program that does not compute formulas)
    and hidden rows. Read in a second, full (not read-only) pass: only that mode knows both."""
    import openpyxl

    empty = {(number, i) for number, values in table.rows for i, v in enumerate(values) if v is None}
    workbook = openpyxl.load_workbook(path, data_only=False)
    try:
        sheet = workbook[name]
        uncomputed = {
            (number, i)
            for number, i in empty
            if isinstance(v := sheet.cell(row=number, column=i + 1).value, str) and v.startswith("=")
        }
        hidden = sorted(
            n for n, dim in sheet.row_dimensions.items() if dim.hidden and n >= 2 and n <= sheet.max_row
        )
    finally:
        workbook.close()
    return uncomputed, hidden


def _decode_text(raw: bytes, path: Path) -> tuple[str, str]:
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16"), "UTF-16"  # Excel's "Unicode text" export
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :].decode("utf-8", errors="strict"), "UTF-8 with BOM"
    try:
        return raw.decode("utf-8"), "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        # GB18030 is a superset of GBK and GB2312, what Chinese Excel writes csv files in.
        return raw.decode("gb18030"), "GBK"
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            "cannot decode the text (tried UTF-8, UTF-8 with BOM, UTF-16, GBK)",
            path=path,
            line=line,
            hint="save the file as UTF-8 csv",
        ) from None


def _sniff_delimiter(text: str, suffix: str) -> str:
    first_line = text.split("\n", 1)[0]
    if suffix in (".tsv", ".tab") and "\t" in first_line:
        return "\t"
    try:
        delimiter = csv.Sniffer().sniff(text[:65536], delimiters=DELIMITERS).delimiter
    except csv.Error:
        delimiter = None
    # The sniffer can be fooled by commas inside long answers; the header line is the better witness.
    if delimiter is None or delimiter not in first_line:
        counts = {d: first_line.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        delimiter = best if counts[best] else ("\t" if suffix in (".tsv", ".tab") else ",")
    return delimiter


def _read_csv(path: Path, limit: int | None) -> Table:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("empty file", path=path, hint="choose a file that has a header row and data")
    text, encoding = _decode_text(raw, path)
    delimiter = _sniff_delimiter(text, path.suffix.lower())
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    table = Table([], [], encoding=encoding, delimiter=delimiter)
    try:
        header = next(reader, [])
        columns = _header(header)
        if not columns:
            raise DataError("row 1 (the header) is empty", path=path, hint="put the column names in row 1")
        table.columns = columns
        # Each csv record is one spreadsheet row, even when a quoted cell spans several lines.
        for number, values in enumerate(reader, start=2):
            if limit is not None and len(table.rows) >= limit:
                break
            table.rows.append((number, values))
    except csv.Error as exc:
        raise DataError(f"unreadable csv: {exc}", path=path, row=len(table.rows) + 2) from None
    return table


def _read_json_table(path: Path, limit: int | None) -> Table:

    records, problems = read_records(path)
    columns: dict[str, None] = {}
    for record in records:
        if isinstance(record.data, dict):
            columns.update(dict.fromkeys(str(key) for key in record.data))
    names = list(columns)
    table = Table(names, [], unit="line")
    table.bad_rows = [(p.line or 0, p.message) for p in problems]
    for record in records[:limit]:
        if isinstance(record.data, dict):
            table.rows.append((record.line, [record.data.get(name) for name in names]))
        else:
            table.bad_rows.append((record.line, "not a JSON object"))
    return table


def read_table(path: str | Path, sheet: str | None = None, *, limit: int | None = None) -> Table:
    """Read a spreadsheet, csv/tsv or JSON file as a header plus numbered rows of raw values.

    Example:
        >>> # qa.csv holding "Question,Answer\\nHi?,Hello\\n"
        >>> # read_table("qa.csv") -> Table(columns=["Question", "Answer"], rows=[(2, ["Hi?", "Hello"])])
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            "file not found" if not path.exists() else "not a file", path=path, hint="check the path"
        )
    suffix = path.suffix.lower()
    if suffix in EXCEL_SUFFIXES:
        return _read_excel(path, sheet, limit)
    if suffix == ".xls":
        raise DataError("old Excel .xls format", path=path, hint="save it as .xlsx or csv")
    if sheet is not None and not _is_excel(path):
        raise DataError(f"--sheet {sheet!r} given but the file is not a spreadsheet", path=path)
    if suffix in CSV_SUFFIXES:
        return _read_csv(path, limit)
    if suffix in JSON_SUFFIXES:
        return _read_json_table(path, limit)
    raise DataError(f"unsupported file type {suffix or '(none)'}", path=path, hint=f"use one of {SUPPORTED}")


def _is_excel(path: Path) -> bool:
    return path.suffix.lower() in EXCEL_SUFFIXES


# ----------------------------------------------------------------------------- helpers for the app


def list_sheets(path: str | Path) -> list[str]:
    """Sheet names of a workbook; [] for csv and JSON files (they have no sheets)."""
    path = Path(path)
    if not _is_excel(path):
        return []
    workbook = _open_workbook(path)
    try:
        return list(workbook.sheetnames)
    finally:
        workbook.close()


def list_columns(path: str | Path, sheet: str | None = None) -> list[str]:
    """Column names (header row); a blank header cell is named by its column letter."""
    return read_table(path, sheet, limit=0).columns


def preview_rows(path: str | Path, sheet: str | None = None, n: int = 5) -> list[dict[str, str]]:
    """The first ``n`` data rows as {column: text}.

    Example:
        >>> # preview_rows("qa.csv", None, 1) -> [{"Question": "Hi?", "Answer": "Hello"}]
    """
    table = read_table(path, sheet, limit=n)
    return [
        {name: cell_text(values[i]) if i < len(values) else "" for i, name in enumerate(table.columns)}
        for _, values in table.rows[:n]
    ]
