"""Where tuner keeps things: the user's workspace (runs, models, uploads) and the default model.

The workspace is the folder the app or CLI was started in, or ``$TUNER_WORKSPACE``. Paths typed into
the app must stay inside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tuner.core.errors import TunerError

DEFAULT_MODEL_NAME = "default"
# Folder name of the embedded model once converted to safetensors.
EMBEDDED_DIR_NAME = "SmolLM2-135M-Instruct"


def workspace_dir() -> Path:
    """The user's workspace: ``$TUNER_WORKSPACE`` or the current directory."""
    return Path(os.environ.get("TUNER_WORKSPACE") or os.getcwd()).resolve()


def work_dirs() -> Path:
    """Root of the run folders: ``<workspace>/work_dirs``."""
    return workspace_dir() / "work_dirs"


def default_model_dir() -> Path:
    """Folder of the embedded default model (converted on first use).

    ``$TUNER_DEFAULT_MODEL_DIR`` overrides it, so that tests and several workspaces can share one copy.
    """
    override = os.environ.get("TUNER_DEFAULT_MODEL_DIR")
    if override:
        return Path(override).resolve()
    return workspace_dir() / "models" / EMBEDDED_DIR_NAME


def inside_workspace(path: str | Path, root: Path | None = None) -> Path:
    """Resolve ``path`` (relative to the workspace) and refuse anything outside it.

    >>> inside_workspace("data/a.jsonl", Path("/ws"))  # doctest: +SKIP
    PosixPath('/ws/data/a.jsonl')
    """
    root = (root or workspace_dir()).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    candidate = candidate.resolve()
    if candidate != root and root not in candidate.parents:
        raise TunerError(f"{path}: outside the workspace {root}; move the file into the workspace first")
    return candidate


def resolve_path(path: str | Path) -> Path:
    """A path from a config: absolute as is, relative against the workspace ($TUNER_WORKSPACE or cwd)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else workspace_dir() / path
