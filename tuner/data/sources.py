"""Where training data comes from: a local file, a parquet / Arrow file, a ``datasets`` folder
(``save_to_disk``) or a Hugging Face Hub data set, read into the raw records the format readers take.

A data source is written as one string (``data_path`` in a config, the CLI, the app's Data tab)::

    data/train.jsonl                                   a JSON / JSON Lines / text file (tuner.data.records)
    data/train.parquet, data/train.arrow               one table, one record per row
    data/medqa_ds                                      a folder written by Dataset(Dict).save_to_disk
    yahma/alpaca-cleaned                               a Hub data set (its "train" split)
    yahma/alpaca-cleaned?split=train[:1000]&subset=default&columns=question:instruction,answer:output

``split`` picks a split (Hub slices such as ``train[:10%]`` work), ``subset`` a Hub configuration,
``columns`` renames the data set's columns to the fields a format reader expects (``from:to``).
With ``HF_HUB_OFFLINE=1`` a Hub data set loads from the local ``datasets`` cache of an earlier
online load. Rows become records numbered from 1, so every check and error message of the format
readers names the row, exactly as it names the line of a JSON Lines file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from tuner.core.errors import DataError
from tuner.core.workspace import resolve_path
from tuner.data.records import Record, read_records

TABLE_SUFFIXES = {".parquet", ".arrow"}
# A missing path with one of these endings is a mistyped file, never a Hub id.
FILE_SUFFIXES = TABLE_SUFFIXES | {".jsonl", ".json", ".txt", ".text", ".md", ".csv", ".xlsx", ".xls", ".tsv"}
# save_to_disk writes one of these into the folder: state.json per Dataset, dataset_dict.json per DatasetDict.
DISK_MARKERS = ("dataset_dict.json", "state.json")
OPTIONS = ("split", "subset", "columns")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class DataSource:
    """A parsed data source string.

    Attributes:
        text: the string as written (what messages name).
        kind: "file" (JSON / JSON Lines / text), "table" (parquet / Arrow), "disk" (save_to_disk folder)
            or "hub" (a Hub data set id).
        location: the resolved local path, or the Hub id.
        split, subset: the split and Hub configuration asked for (None = the default).
        columns: data set column -> the field name the format readers expect.
    """

    text: str
    kind: str
    location: str
    split: str | None = None
    subset: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def rows(self) -> bool:
        """Whether records are numbered by row (tables, data sets) rather than by line."""
        return self.kind != "file"


def _options(query: str, text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise DataError(
                f"unknown data source option {key!r} in {text!r}",
                hint="options are "
                + ", ".join(OPTIONS)
                + ", e.g. owner/name?split=train&columns=q:instruction",
            )
        if key == "columns":
            mapping = {}
            for pair in filter(None, (p.strip() for p in value.split(","))):
                source, sep, target = pair.partition(":")
                if not sep or not source.strip() or not target.strip():
                    raise DataError(
                        f"columns: {pair!r} is not FROM:TO",
                        hint="e.g. columns=question:instruction,answer:output",
                    )
                mapping[source.strip()] = target.strip()
            options["columns"] = mapping
        elif value.strip():
            options[key] = value.strip()
    return options


def parse_source(text: str | Path) -> DataSource:
    """Parse a data source string: a local path (relative to the workspace) or a Hub data set id.

    >>> parse_source("yahma/alpaca-cleaned?split=train[:10]&columns=q:instruction").columns
    {'q': 'instruction'}
    >>> parse_source("yahma/alpaca-cleaned").kind  # when no such local path exists
    'hub'
    """
    text = str(text).strip()
    if not text:
        raise DataError("no data source given", hint="a data file, a datasets folder, or a Hub id owner/name")
    whole = resolve_path(text)
    location, options = text, {}
    if not whole.exists() and "?" in text:  # a local file name may contain "?"; a query never exists
        location, _, query = text.partition("?")
        options = _options(query, text)
    path = resolve_path(location)
    if path.is_dir() and any((path / marker).is_file() for marker in DISK_MARKERS):
        return DataSource(text, "disk", str(path), **options)
    if path.exists() or not HUB_ID.match(location) or path.suffix.lower() in FILE_SUFFIXES:
        kind = "table" if path.suffix.lower() in TABLE_SUFFIXES else "file"
        if kind == "file" and (options.get("split") or options.get("subset")):
            raise DataError(
                f"{location}: split and subset apply to data sets, not to a single file", path=path
            )
        return DataSource(text, kind, str(path), **options)
    return DataSource(text, "hub", location, **options)


def source_problem(text: str) -> str | None:
    """Why ``text`` cannot be a data source, without loading it (None when it may be one); for
    config validation. A Hub id is only checked for its form: whether it exists is known on loading."""
    try:
        source = parse_source(text)
    except DataError as exc:
        return str(exc)
    if source.kind == "hub":
        return None
    if source.path.is_dir() and source.kind != "disk":
        return (
            f"{source.location} is a folder but not a `datasets` folder (no {' or '.join(DISK_MARKERS)}); "
            "give a data file, a folder written by save_to_disk, or a Hub id owner/name"
        )
    if not source.path.exists():
        return f"file not found: {source.location}"
    return None


# ----------------------------------------------------------------------------------------- reading


def _table_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path).to_pylist()
        with pa.memory_map(str(path)) as handle:  # datasets writes Arrow streams; Feather v2 is a file
            try:
                return pa.ipc.open_stream(handle).read_all().to_pylist()
            except pa.ArrowInvalid:
                handle.seek(0)
                return pa.ipc.open_file(handle).read_all().to_pylist()
    except FileNotFoundError:
        raise DataError("file not found", path=path, hint="check the path") from None
    except (pa.ArrowException, OSError) as exc:
        kind = "Parquet" if path.suffix.lower() == ".parquet" else "Arrow"
        raise DataError(f"not a readable {kind} file ({exc})", path=path, hint="check the file") from None


def _pick_split(splits, source: DataSource, where: str):
    names = list(splits)
    wanted = source.split or (DEFAULT_SPLIT if DEFAULT_SPLIT in names or len(names) != 1 else names[0])
    if wanted not in names:
        raise DataError(
            f"no split {wanted!r} (splits: {', '.join(names)})",
            path=where,
            hint=f"add ?split=NAME to the data source, e.g. {source.text.partition('?')[0]}?split={names[0]}",
        )
    return splits[wanted]


def _disk_rows(source: DataSource) -> list[dict]:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(source.location)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise DataError(f"cannot load the datasets folder ({exc})", path=source.location) from None
    if isinstance(loaded, DatasetDict):
        loaded = _pick_split(loaded, source, source.location)
    elif source.split:
        raise DataError(
            f"the folder holds one data set, not splits; drop ?split={source.split}", path=source.location
        )
    return loaded.to_list()


def _hub_rows(source: DataSource) -> list[dict]:
    import datasets

    split = source.split or DEFAULT_SPLIT
    where = f"{source.location} (Hub data set)"
    try:
        loaded = datasets.load_dataset(source.location, source.subset, split=split)
    except ConnectionError as exc:
        raise DataError(
            f"not in the local datasets cache, and the Hub cannot be reached ({exc})",
            path=where,
            hint="load it once with the Hub reachable (HF_HUB_OFFLINE unset), or give a local file",
        ) from None
    except (FileNotFoundError, ValueError) as exc:  # unknown id, subset or split: datasets names them
        raise DataError(
            str(exc).strip().splitlines()[0],
            path=where,
            hint="check the id, ?subset= and ?split= (e.g. ?split=train)",
        ) from None
    return loaded.to_list()


def _renamed(row: dict, columns: dict[str, str], source: DataSource, index: int) -> dict:
    missing = [name for name in columns if name not in row]
    if missing:
        raise DataError(
            f"columns: no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, row))})",
            path=source.text.partition("?")[0],
            row=index + 1,
            hint="fix the columns= mapping of the data source",
        )
    return {columns.get(key, key): value for key, value in row.items()}


def read_source(source: DataSource) -> tuple[list[Record], list[DataError]]:
    """The raw records of a data source, numbered from 1 (lines of a file, rows of a data set).

    Raises DataError when the source cannot be read at all; bad JSON Lines lines come back as problems.
    """
    if source.kind == "file":
        records, problems = read_records(source.path)
        if source.columns:
            records = [
                Record(
                    r.line,
                    _renamed(r.data, source.columns, source, i) if isinstance(r.data, dict) else r.data,
                )
                for i, r in enumerate(records)
            ]
        return records, problems
    if source.kind == "table":
        rows = _table_rows(source.path)
    elif source.kind == "disk":
        rows = _disk_rows(source)
    else:
        rows = _hub_rows(source)
    if not rows:
        raise DataError("no rows", path=source.text, hint="choose another split or data set")
    if source.columns:
        rows = [_renamed(row, source.columns, source, i) for i, row in enumerate(rows)]
    return [Record(index + 1, row) for index, row in enumerate(rows)], []
