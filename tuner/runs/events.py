"""The event stream of a run: one JSON line per event in ``events.jsonl``, also handed to listeners.

The CLI's progress bar, the app's live view and the run history all read the same events.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Append-only event list, mirrored to ``<run_dir>/events.jsonl`` and to an optional listener."""

    def __init__(self, path: Path | None = None, listener: Callable[[dict], None] | None = None):
        self.path = Path(path) if path else None
        self.listener = listener
        self._events: list[dict] = []
        self._lock = threading.Lock()

    def emit(self, kind: str, **fields) -> dict:
        event = {
            "type": kind,
            "time": round(time.time(), 3),
            **{k: v for k, v in fields.items() if v is not None},
        }
        with self._lock:
            self._events.append(event)
            if self.path:
                # One flushed line per event: a reader never sees half an event (it skips a torn last line).
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(event, ensure_ascii=False) + "\n")
        if self.listener:
            self.listener(event)
        return event

    def notify(self, kind: str, **fields) -> None:
        """Hand a passing event (a step tick) to the listener only: not kept, not written to the file.
        The CLI's bar moves on every step without one line per step in events.jsonl."""
        if self.listener:
            self.listener({"type": kind, "time": round(time.time(), 3), **fields})

    def since(self, index: int = 0) -> list[dict]:
        with self._lock:
            return list(self._events[index:])

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


def read_events(run_dir: str | Path) -> list[dict]:
    """Events of a past or running run; a torn last line (a write in progress) is ignored."""
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def whole_run(events: list[dict]) -> list[dict]:
    """A run's events across resumed sessions, as one run.

    Each session starts with a ``preparing`` status; a resumed one then reports the checkpoint step it
    continues from. What an earlier session logged after that step (redone after a cancel or a
    crash) is dropped, as are its errors, so the curve has one point per step.
    """
    sessions: list[list[dict]] = []
    for e in events:
        if not sessions or (e["type"] == "status" and e.get("status") == "preparing"):
            sessions.append([])
        sessions[-1].append(e)
    merged: list[dict] = []
    for session in sessions:
        start = next((e.get("step") for e in session if e.get("status") == "running"), None)
        if start and merged:
            merged = [e for e in merged if e["type"] != "error" and (e.get("step") or 0) <= start]
        merged += session
    return merged
