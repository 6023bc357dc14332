"""Errors a user can act on.

The engine raises these; the CLI prints ``error: <message>`` and exits non-zero, the app shows the
message in a toast and a status box. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


class TunerError(Exception):
    """Base class: the message alone must tell the user what went wrong and what to do."""


class DataError(TunerError):
    """A problem in a user's data file, located as precisely as we can.

    >>> str(DataError("missing 'output'", path="a.jsonl", line=3, field="conversation[0]",
    ...     hint="add an answer or delete the line"))
    "a.jsonl:3: conversation[0]: missing 'output' (add an answer or delete the line)"
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        row: int | None = None,
        column: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ):
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.row = row
        self.column = column
        self.field = field
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.path:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            elif self.row is not None:
                where += f": row {self.row}"
            where += ": "
        elif self.row is not None:
            where = f"row {self.row}: "
        elif self.line is not None:
            where = f"line {self.line}: "
        field = f"{self.field}: " if self.field else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{field}{self.message}{hint}"


class ConfigError(TunerError):
    """One or more problems in a training config; all of them are reported at once."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            text = f"{head}{self.problems[0]}"
        else:
            text = f"{head}{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(text)


class ModelError(TunerError):
    """A model or tokenizer could not be found, loaded or used as asked."""


class OutputExistsError(TunerError):
    """Refusing to overwrite a file or folder the user already has."""

    def __init__(self, path: str | Path, what: str = "file"):
        self.path = str(path)
        super().__init__(
            f"{path}: {what} already exists; pass --force to overwrite it or choose another name"
        )


class JobError(TunerError):
    """The background training job was asked to do something it cannot do now."""


class StorageError(TunerError):
    """A write the operating system refused: the disk is full, read-only, or not ours to write."""


# errno -> (what happened, what to do). One table, so every writer says the same true thing.
STORAGE_ERRNOS = {
    errno.ENOSPC: (
        "cannot write: the disk is full",
        "free some space (old work_dirs/ runs, checkpoints) or write elsewhere",
    ),
    errno.EDQUOT: ("cannot write: the disk quota is used up", "free some space or ask for a larger quota"),
    errno.EROFS: ("cannot write: the file system is read-only", "write to a folder on a writable disk"),
    errno.EACCES: ("permission denied", "use a file or folder you own, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "use a file or folder you own, or fix its permissions"),
}
WRITE_FAILED = -1  # a library's failed write without an errno
STORAGE_ERRNOS[WRITE_FAILED] = (
    "cannot write: the write failed, most likely because the disk is full",
    "free some space (old work_dirs/ runs, checkpoints) or write elsewhere",
)
# Libraries that report a failed write as text (safetensors' Rust errors, torch's C++ streams).
_STORAGE_TEXTS = {
    "no space left on device": errno.ENOSPC,
    "os error 28": errno.ENOSPC,
    "storagefull": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "os error 30": errno.EROFS,
    "readonlyfilesystem": errno.EROFS,
    # torch.save's C++ writer says only this; with the file already open, a full disk is the usual cause
    "file write failed": WRITE_FAILED,
}


def storage_error(exc: BaseException) -> StorageError | None:
    """The user's words for an exception caused by a refused write, else None.

    Looks through the exception's causes, so a library's wrapper error is understood too.

    >>> str(storage_error(OSError(28, "No space left on device", "out/a.jsonl")))
    'out/a.jsonl: cannot write: the disk is full; free some space (old work_dirs/ runs, checkpoints) or write elsewhere'
    """
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current
        code = current.errno if isinstance(current, OSError) else None
        if code not in STORAGE_ERRNOS:
            text = str(current).lower().replace(" ", "")
            code = next((c for t, c in _STORAGE_TEXTS.items() if t.replace(" ", "") in text), None)
        if code in STORAGE_ERRNOS:
            what, todo = STORAGE_ERRNOS[code]
            name = getattr(current, "filename", None) if isinstance(current, OSError) else None
            where = f"{name}: " if name else ""
            return StorageError(f"{where}{what}; {todo}")
        current = current.__cause__ or current.__context__
    return None
