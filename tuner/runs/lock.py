"""One training at a time in a run folder: an OS lock on ``<run>/.lock`` that dies with its process.

Two trainings into one ``output_dir``, or two resumes of one run, would each report "completed" over
a folder holding one run's adapter and the other's config.yaml. The lock is ``flock``: the kernel
drops it when the holder exits, kill -9 included, so a crashed run never leaves a folder locked and
"is anyone training here?" (:func:`in_use`) is always answered truly, without trusting a pid.

Inside one process the lock is counted: the app's job prepares a run folder in the request thread
and trains in another thread of the same process, and both hold the folder.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tuner.core.errors import TunerError
from tuner.runs.folders import ADAPTER_DIR, CONFIG_FILE, STATUS_FILE

try:
    import fcntl
except ImportError:  # not POSIX: folders are not locked (tuner targets Linux and macOS)
    fcntl = None

LOCK_FILE = ".lock"
CLAIM_TRIES = 20  # x 0.05 s: an in_use() probe holds the lock for microseconds, never fail on one


class RunFolderBusy(TunerError):
    """Another process is training in this run folder."""


_held: dict[Path, list[int]] = {}  # folder -> [file descriptor, claims by this process]
_guard = threading.Lock()


def claim(run_dir: Path) -> bool:
    """Hold ``run_dir`` for this process; True if taken now, False if this process already held it.

    Raises:
        RunFolderBusy: another process holds it (the message names its pid and what to do).
    """
    key = Path(run_dir).resolve()
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return False
        fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, key)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        _held[key] = [fd, 1]
        return True


def release(run_dir: Path) -> None:
    """Undo one :func:`claim`; the last one unlocks the folder."""
    key = Path(run_dir).resolve()
    with _guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _held[key]
            os.close(entry[0])  # closing the descriptor drops the flock


def in_use(run_dir: Path) -> bool:
    """Whether a live process (this one included) is training in ``run_dir``."""
    key = Path(run_dir).resolve()
    if key in _held:
        return True
    if fcntl is None or not (key / LOCK_FILE).is_file():
        return False
    try:
        fd = os.open(key / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _lock(fd: int, run_dir: Path) -> None:
    if fcntl is None:
        return
    for _ in range(CLAIM_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.05)
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    raise RunFolderBusy(
        f"{run_dir}: another training is running in this run folder (process {holder}); "
        "wait for it to finish or stop it, or train into another folder"
    )


def holds_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds (part of) a training run that a new one would overwrite."""

    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (CONFIG_FILE, ADAPTER_DIR, STATUS_FILE)) or any(
        run_dir.glob("checkpoint-*")
    )


def hold_new_run(run_dir: Path) -> None:
    """Claim ``run_dir`` for a new training. A folder that already holds a run (an ``output_dir``
    pointed at an earlier run, say) is refused: training there would delete that run's adapter.

    Raises:
        RunFolderBusy: another process trains there.
        TunerError: the folder holds an earlier run.
    """
    if not claim(run_dir):
        return  # this process prepared the folder a moment ago (the app's job): it is ours
    if holds_a_run(run_dir):
        release(run_dir)
        raise TunerError(
            f"{run_dir}: this folder already holds a training run (config.yaml, adapter/ or checkpoints); "
            f"resume it (python -m tuner train {Path(run_dir) / 'config.yaml'} --resume), or set "
            "output_dir to a new or empty folder (or leave it empty for work_dirs/<name>/<timestamp>)"
        )
