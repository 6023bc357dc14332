"""Run folders: ``work_dirs/<name>/<timestamp>/`` and their checkpoints."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tuner.core.workspace import work_dirs

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_DIR = "adapter"  # final LoRA adapter (or full model for method full)
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
SAMPLES_FILE = "eval_samples.jsonl"
STATUS_FILE = "status.json"


def new_run_dir(name: str, root: Path | None = None) -> Path:
    """Create ``<root>/<name>/<YYYYmmdd-HHMMSS>`` (suffix -2, -3... if taken this second)."""
    base = Path(root or work_dirs()) / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = base / stamp, 1
    while True:
        try:
            candidate.mkdir(parents=True)  # creating is the check: two runs started at once get two folders
            return candidate
        except FileExistsError:
            n += 1
            candidate = base / f"{stamp}-{n}"


def list_runs(root: Path | None = None) -> list[Path]:
    """Every run folder (one holding config.yaml), newest first: by when its config.yaml was written
    (at its start, or a resume's), not by the folder's own time, which every lock file and status
    update inside it moves."""
    root = Path(root or work_dirs())
    if not root.is_dir():
        return []
    configs = list(root.glob(f"*/*/{CONFIG_FILE}"))
    return [c.parent for c in sorted(configs, key=lambda c: c.stat().st_mtime, reverse=True)]


def latest_run(name: str, root: Path | None = None) -> Path | None:
    base = Path(root or work_dirs()) / name
    if not base.is_dir():
        return None
    runs = sorted((p for p in base.iterdir() if (p / CONFIG_FILE).is_file()), key=lambda p: p.name)
    return runs[-1] if runs else None


def is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint is complete once the Trainer wrote its state file, which it writes last."""
    has_weights = any(
        (folder / n).is_file() for n in ("adapter_model.safetensors", "model.safetensors")
    ) or any(folder.glob("model-*.safetensors"))
    return (folder / "trainer_state.json").is_file() and has_weights


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    run_dir = Path(run_dir)
    found = []
    for child in run_dir.iterdir() if run_dir.is_dir() else []:
        match = CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and is_complete_checkpoint(child):
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def last_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None
