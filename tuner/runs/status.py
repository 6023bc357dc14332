"""A run's status as it is true now, not as its last writer left it.

A training that is killed (kill -9, an out-of-memory kill, a closed laptop, a crashed app) or that
fills the disk cannot write its own end: ``status.json`` still says "running". The run folder's lock
(:mod:`tuner.runs.lock`) is held by the kernel for exactly as long as the training process lives, so
a run that says it is active while nobody holds its lock was interrupted; :func:`read_status` says so
and corrects the file.
"""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path

from tuner.core.io import write_text_atomic
from tuner.runs.events import read_events
from tuner.runs.folders import STATUS_FILE, last_checkpoint
from tuner.runs.lock import in_use

ACTIVE_STATES = ("starting", "preparing", "loading", "running", "stopping")


def read_status(run_dir: str | Path) -> dict:
    """``status.json`` (or, before it exists, the last status event), with a dead run marked
    ``interrupted``: its ``error`` says what happened and how to go on. ``{}`` for an empty folder."""
    run_dir = Path(run_dir)
    info: dict = {}
    path = run_dir / STATUS_FILE
    with suppress(OSError, ValueError):
        info = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        info = {}
    if not info.get("status"):
        statuses = [e for e in read_events(run_dir) if e.get("type") == "status" and e.get("status")]
        if statuses:
            info = {"status": statuses[-1]["status"]}
    if info.get("status") not in ACTIVE_STATES or in_use(run_dir):
        return info
    checkpoint = last_checkpoint(run_dir)
    then = (
        f"resume it from {checkpoint.name} (Resume, or python -m tuner train {run_dir / 'config.yaml'} --resume)"
        if checkpoint
        else "no checkpoint was written, so train it again"
    )
    info = {
        **info,
        "status": "interrupted",
        "error": "the training process ended without finishing (killed, crashed, or the disk filled up); "
        + then,
    }
    # Best effort: a read-only or full disk still gets the true status shown, just not saved.
    with suppress(OSError):
        write_text_atomic(path, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
    return info
