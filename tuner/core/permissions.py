"""File modes that follow the user's umask.

tempfile.mkstemp and mkdtemp make 0600 files and 0700 folders on purpose (they are private scratch
space). tuner stages its outputs with them and then renames them into place, so without a chmod every
run, export and converted model would stay private to its owner, whatever the umask says: on a shared
lab machine a teacher or classmate could not read them. These helpers give staged outputs the mode an
ordinary ``open()`` / ``mkdir()`` would have given them.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc (read without touching it); elsewhere it is set
    and restored at once, under a lock, since os.umask can only be read by setting it."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 less the umask (0644 under umask 022)."""
    return 0o666 & ~current_umask()


def new_folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 less the umask (0755 under umask 022)."""
    return 0o777 & ~current_umask()


def replacement_file_mode(path: str | Path) -> int:
    """The mode for a file that is about to replace ``path``: the existing file's own (a user's chmod
    survives a rewrite), else a new file's."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return new_file_mode()


def share_staged_folder(folder: str | Path) -> None:
    """Give a folder made by tempfile.mkdtemp the mode ``mkdir`` would have given it."""
    os.chmod(folder, new_folder_mode())
