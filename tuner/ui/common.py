"""What every tab shares: error handling, workspace paths, uploads, the app log.

Handlers are plain functions that return their outputs and raise TunerError for user errors; they
are testable without a browser. :func:`guard` wraps one for Gradio: a TunerError becomes readable
text in the tab's status box *and* a red toast; anything else is a bug, logged with its traceback
to ``<workspace>/logs/app.log`` and reported with that path. Either way the app keeps running.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import shutil
import traceback
from pathlib import Path

from tuner.core.errors import TunerError, storage_error
from tuner.core.io import atomic_open
from tuner.core.workspace import inside_workspace, workspace_dir

log = logging.getLogger("tuner.ui")

UPLOADS = "uploads"
DATA_SUFFIXES = (".xlsx", ".xls", ".csv", ".json", ".jsonl", ".txt")
# An upload larger than this is refused by Gradio before it is stored (launch's max_file_size) and by
# save_upload: a remote user must not fill the disk, and data sets for one GPU are far smaller.
MAX_UPLOAD_BYTES = 2 * 1024**3
# Where the Data tab never writes: run folders, models, logs. Its outputs are data files (.jsonl,
# .json), and an existing .json is never replaced (a model's config.json or tokenizer.json is one).
NOT_DATA_FOLDERS = ("work_dirs", "models", "logs", ".git")
DATA_OUTPUT_SUFFIXES = (".jsonl", ".json")
# Files that mark a folder as a model, adapter or run folder rather than a data folder.
MODEL_OR_RUN_FILES = ("config.json", "adapter_config.json", "config.yaml", "status.json", "model.safetensors")


def log_path() -> Path:
    return workspace_dir() / "logs" / "app.log"


def log_exception(where: str) -> Path:
    """Append the current exception's traceback to the app log; returns the log's path."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    import time

    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} in {where}\n{traceback.format_exc()}\n")
    return path


def error_text(exc: BaseException, where: str) -> str:
    """The status-box text for an exception (the traceback goes to the log, never to the page)."""
    if isinstance(exc, TunerError):
        return f"❌ {exc}"
    refused = storage_error(exc)  # a full or read-only disk: the user's to fix, not a bug
    if refused is not None:
        return f"❌ {refused}"
    path = log_exception(where)
    return f"❌ unexpected error: {type(exc).__name__}: {exc}\n(details: {path})"


def guard(fn, n_outputs: int, status_index: int | None):
    """Wrap handler ``fn`` for an event with ``n_outputs`` outputs, the status box at ``status_index``.

    On an error the status box gets the message, the other outputs keep their values, and a toast
    shows it. Generator handlers (streaming) are supported.
    """
    import gradio as gr

    def failed(exc: BaseException):
        text = error_text(exc, fn.__name__)
        outputs = [gr.skip()] * n_outputs
        if status_index is not None:
            outputs[status_index] = text
        return text, (outputs[0] if n_outputs == 1 else tuple(outputs))

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            if inspect.isgenerator(result):
                yield from result
            else:
                yield result
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure must reach the user in words
            text, outputs = failed(exc)
            if n_outputs:
                yield outputs
            raise gr.Error(text.removeprefix("❌ "), print_exception=False) from None

    return run


def ws_path(text: str | Path | None, what: str = "path", must_exist: bool = True) -> Path:
    """A path typed in the UI, resolved inside the workspace (TunerError if outside or missing)."""
    if text is None or not str(text).strip():
        raise TunerError(f"{what}: empty; pick or type a file inside the workspace")
    path = inside_workspace(str(text).strip())
    if must_exist and not path.exists():
        raise TunerError(f"{text}: no such file or folder in the workspace {workspace_dir()}")
    return path


def data_output(text: str | Path | None, what: str = "output") -> Path:
    """A file the Data tab may write: inside the workspace, a data file (.jsonl or a new .json), and
    not in a run, model or log folder, so that Overwrite can never replace a user's code, a model's
    config.json or a run's config.yaml."""
    path = ws_path(text, what, must_exist=False)
    inside = path.relative_to(workspace_dir()).parts
    if path.suffix.lower() not in DATA_OUTPUT_SUFFIXES:
        raise TunerError(f"{text}: {what} must be a .jsonl file (data), e.g. data/{path.stem}.jsonl")
    in_other_folder = bool(inside) and inside[0] in NOT_DATA_FOLDERS
    if in_other_folder or any((path.parent / name).exists() for name in MODEL_OR_RUN_FILES):
        raise TunerError(
            f"{text}: that folder holds runs, models or logs, not data; write under data/ instead, "
            f"e.g. data/{path.name}"
        )
    if path.suffix.lower() == ".json" and path.exists():
        raise TunerError(f"{text}: an existing .json file is never replaced from here; choose a .jsonl name")
    if path.exists() and not path.is_file():
        raise TunerError(f"{text}: a folder of that name exists; choose a file name")
    return path


def confine_config(config):
    """The Train tab's config with every path it names checked to stay inside the workspace: data and
    eval data, the model folder, a DeepSpeed .json and output_dir. Behind ``--listen --auth`` a remote
    user must not read data, load code or write a run folder elsewhere (TunerError otherwise)."""
    from tuner.config.schema import DEEPSPEED_PRESETS

    for key in ("data_path", "eval_data_path", "output_dir"):
        value = getattr(config, key)
        if value:
            ws_path(value, key, must_exist=False)
    model_ref(config.model)
    if config.deepspeed and config.deepspeed not in DEEPSPEED_PRESETS:
        ws_path(config.deepspeed, "deepspeed", must_exist=False)
    return config


def rel(path: str | Path) -> str:
    """A path as the user should see it: relative to the workspace when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(workspace_dir()))
    except ValueError:
        return str(path)


def save_upload(tmp_file: str | Path) -> Path:
    """Copy a file Gradio received into ``<workspace>/uploads`` and return the copy.

    A file with the same name and content is reused; a different one gets a ``-2``, ``-3`` suffix.
    """
    src = Path(tmp_file)
    if src.suffix.lower() not in DATA_SUFFIXES:
        raise TunerError(f"{src.name}: unsupported file type; use one of {', '.join(DATA_SUFFIXES)}")
    size = src.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise TunerError(
            f"{src.name}: {size / 2**20:,.0f} MiB is more than the {MAX_UPLOAD_BYTES / 2**20:,.0f} MiB an upload "
            "may be; copy the file into the workspace folder and pick it from the list instead"
        )
    folder = workspace_dir() / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    digest = _digest(src)
    target, n = folder / src.name, 1
    while target.exists():
        if _digest(target) == digest:
            return target
        n += 1
        target = folder / f"{src.stem}-{n}{src.suffix}"
    # atomic: a full disk never leaves a truncated copy that a later upload would be compared with
    with open(src, "rb") as source, atomic_open(target, "wb", force=False) as copy:
        shutil.copyfileobj(source, copy, 1 << 20)
    return target


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # in blocks: an upload is never held whole in memory
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def workspace_files(suffixes=DATA_SUFFIXES, limit: int = 500, depth: int = 4) -> list[str]:
    """Data files in the workspace (relative paths), skipping run folders, models and hidden folders."""
    import os

    root = workspace_dir()
    skip = {"work_dirs", "models", "logs", "node_modules", "__pycache__", "test-artifacts"}
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root)
        # Prune in place so that big folders (runs, models, caches) are never walked.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip)
        if len(here.parts) >= depth:
            dirs[:] = []
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                found.append(str(here / name))
                if len(found) >= limit:
                    return found
    return found


def data_ref(text: str | None, what: str = "data") -> str:
    """A data source typed in the UI (tuner.data.sources): a Hub data set id as it is; a file or a
    datasets folder inside the workspace, its ?split=&columns= options kept."""
    from tuner.data.sources import parse_source

    value = (text or "").strip()
    if not value:
        raise TunerError(f"{what}: empty; pick a file, a datasets folder or a Hub id (owner/name)")
    if parse_source(value).kind == "hub":
        return value
    if inside_workspace(value).exists():
        return str(ws_path(value, what))
    location, sep, query = value.partition("?")
    return str(ws_path(location, what)) + sep + query


def model_ref(text: str | None) -> str:
    """A model typed in the UI: ``default``, a hub id, or a local folder that must be in the workspace."""
    value = (text or "").strip() or "default"
    if value == "default":
        return value
    local = Path(value).expanduser()
    if local.is_absolute() or local.exists() or value.startswith((".", "~")):
        return str(inside_workspace(value))
    return value


def run_choices():
    """Past runs (newest first) for the history and export pickers."""
    import gradio as gr

    from tuner.runs.folders import list_runs as runs

    choices = [rel(p) for p in runs()]
    return gr.update(choices=choices, value=choices[0] if choices else None)
