"""Atomic file writes and JSON Lines reading: a crash never leaves a half-written user file."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tuner.core.errors import DataError, OutputExistsError, TunerError
from tuner.core.permissions import replacement_file_mode, share_staged_folder


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, force: bool = True, encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds.

    With ``force=False`` an existing ``path`` raises :class:`OutputExistsError` before anything is
    written, so the user's file is never touched; and the file is published with a hard link, which
    fails if another writer created ``path`` meanwhile, so of two concurrent writers one refuses
    instead of one result being silently lost.
    """
    with atomic_files([path], mode, force=force, encoding=encoding) as (handle,):
        yield handle


@contextmanager
def atomic_files(
    paths: Iterable[str | Path], mode: str = "w", *, force: bool = True, encoding: str | None = "utf-8"
):
    """Several files written as one: each is staged beside its target, and none is published until
    every one is written and on disk. A failure (a full disk, an exception) publishes none of them,
    so a rerun never finds half of the outputs in its way.
    """
    paths = [Path(p) for p in paths]
    if not force:
        for path in paths:
            if path.exists():
                raise OutputExistsError(path)
    if "b" in mode:
        encoding = None
    staged: list[tuple[str, Path]] = []
    handles = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            handles.append(os.fdopen(fd, mode, encoding=encoding))
            # mkstemp makes 0600; the published file gets the mode open() would give it (the umask's).
            os.fchmod(fd, replacement_file_mode(path))
        yield tuple(handles)
        for handle in handles:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        published: list[Path] = []
        try:
            for tmp, path in staged:
                _publish_file(tmp, path, force)
                published.append(path)
        except BaseException:
            if not force:  # the files this call created are its own: take them back
                for path in published:
                    with suppress(FileNotFoundError):
                        path.unlink()
            raise
    finally:
        for handle in handles:
            with suppress(OSError):
                handle.close()
        for tmp, _ in staged:
            with suppress(FileNotFoundError):
                os.unlink(tmp)


def _publish_file(tmp: str, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic create-if-absent: loses no concurrent writer's file
    except FileExistsError:
        raise OutputExistsError(path) from None
    except OSError:  # a file system without hard links: the check above is all we can do
        if path.exists():
            raise OutputExistsError(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


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


def check_output(out_dir: Path, force: bool, *protected: Path) -> None:
    out = out_dir.resolve()
    for path in protected:
        if path is None:
            continue
        src = Path(path).resolve()
        if out == src or out in src.parents or src in out.parents:
            raise TunerError(
                f"{out_dir}: the output must not be (or be inside) the input {path}; choose another folder"
            )
    _check_replaceable(out_dir, force)


def _file_kind(name: str) -> str:
    """What a file of an output is, whatever its numbers: the weights of a model or adapter in one
    file or in shards (a merge again with another shard size replaces them), else its name with its
    numbers folded."""
    folded = re.sub(r"\d+", "#", name)
    if re.fullmatch(r"(model|pytorch_model|adapter_model)(-#-of-#)?\.(safetensors|bin)(\.index\.json)?", folded):
        return "weights"
    return folded


def _check_replaceable(out_dir: Path, force: bool, staged: Path | None = None) -> None:
    """An existing non-empty ``out_dir`` needs ``force``; and (once ``staged`` is complete) ``force``
    replaces only a folder holding nothing but the kinds of files this output writes: never a folder
    of the user's that happens to be named as the output."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not force:
        raise OutputExistsError(out_dir, "folder")
    if not out_dir.is_dir():
        raise TunerError(f"{out_dir}: is a file, not a folder; choose a folder name")
    if staged is None:
        return
    written = {_file_kind(p.name) for p in staged.iterdir()}
    foreign = sorted(p.name for p in out_dir.iterdir() if _file_kind(p.name) not in written)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise TunerError(
            f"{out_dir}: holds files this output does not write ({shown}), so --force (Overwrite) does not "
            "replace it; choose a new or empty folder, or move those files away first"
        )


@contextmanager
def staging_folder(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """A hidden folder beside ``out_dir``; renamed to ``out_dir`` when the block succeeds, else removed.

    With ``force`` an existing ``out_dir`` is replaced only if it holds no file of a kind the block did
    not write (an earlier export or merge, not a folder of the user's).
    """
    out_dir = Path(out_dir)
    _check_replaceable(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        share_staged_folder(staging)  # mkdtemp makes 0700; an export is for others to read too
        yield staging
        _check_replaceable(out_dir, force, staging)
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish(staging: Path, out_dir: Path) -> None:
    """Move ``staging`` to ``out_dir``; an existing ``out_dir`` is moved aside first, deleted last."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
