"""The background training job the app uses: one run at a time, in a thread of this process.

    job = get_job()
    run_dir = job.start(config)        # returns at once; JobError if a run is active
    job.events(since=0)                # new events as they come
    job.stop(save=True)                # stop and save a usable adapter; save=False cancels
    job.wait()

An exception inside the run becomes an ``error`` event and status ``failed``; it never reaches the
caller's thread. When the run ends, its model and optimizer are released.
"""

from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path

from tuner.core.errors import JobError, TunerError
from tuner.runs import lock as folder_lock
from tuner.runs.events import EventLog
from tuner.train import run as train_run  # looked up at call time: tests stand in for train()
from tuner.train.callbacks import RunControl

log = logging.getLogger(__name__)

ACTIVE = ("starting", "running", "stopping")


class TrainingJob:
    def __init__(self):
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._control: RunControl | None = None
        self._events = EventLog()
        self.status = "idle"
        self.run_dir: Path | None = None
        self.result = None
        self.error: str | None = None
        self.config = None

    # The Trainer callback reports events from the training thread; we mirror them in memory so
    # that a reloaded page can replay the whole run.
    def _listen(self, event: dict) -> None:
        if event["type"] == "step":
            return  # per-step ticks are for the CLI's bar; the app polls the logged steps
        self._events.emit(event["type"], **{k: v for k, v in event.items() if k not in ("type", "time")})
        if event.get("run_dir") and self.run_dir is None:
            self.run_dir = Path(event["run_dir"])

    def start(self, config, *, resume: bool = False, run_dir: Path | None = None) -> Path:
        """Start training ``config`` in the background; returns the run folder."""

        with self._lock:
            if self.status in ACTIVE:
                raise JobError(
                    f"a training run is already active ({self.run_dir}); stop it or wait for it to finish"
                )
            run_dir, _ = train_run.prepare_run(config, run_dir=run_dir, resume=resume)
            self._control = RunControl()
            self._events = EventLog()
            self.status, self.run_dir, self.result, self.error, self.config = (
                "starting",
                run_dir,
                None,
                None,
                config,
            )
            self._thread = threading.Thread(
                target=self._run, args=(config, run_dir, resume), name="tuner-train", daemon=True
            )
            self._thread.start()
            return run_dir

    def _run(self, config, run_dir: Path, resume: bool) -> None:

        with self._lock:
            if self.status == "starting":  # a Stop clicked while starting keeps its "stopping"
                self.status = "running"
        final, error = "failed", None
        try:
            self.result = train_run.train(
                config, run_dir=run_dir, resume=resume, control=self._control, listener=self._listen
            )
            final = self.result.status
        except TunerError as exc:
            error = str(exc)
        except Exception as exc:  # a bug: keep the traceback for the log, report the message
            error = f"{type(exc).__name__}: {exc}"
            log.error("training thread failed:\n%s", traceback.format_exc())
            if not any(e["type"] == "error" for e in self._events.since(0)):
                self._events.emit("error", status="failed", message=error)
        finally:
            folder_lock.release(run_dir)  # start() claimed the folder in prepare_run; train() took its own
        # Under the lock, so that a stop() racing with the end of the run cannot leave "stopping" behind.
        with self._lock:
            self.status, self.error = final, error

    def stop(self, save: bool = True) -> None:
        """Ask the run to stop after the current step; with save, the adapter is written and usable."""
        with self._lock:
            if self.status not in ACTIVE or self._control is None:
                raise JobError("no training run is active")
            if self._control.stop_requested:  # Stop and Cancel racing: the first one decides, and says so
                asked = "stop and save" if self._control.save_on_stop else "cancel without saving"
                raise JobError(f"the run was already asked to {asked}; it ends after the current step")
            self._control.request_stop(save=save)
            self.status = "stopping"

    def cancel(self) -> None:
        self.stop(save=False)

    def events(self, since: int = 0) -> list[dict]:
        return self._events.since(since)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def wait(self, timeout: float | None = None) -> str:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status


_JOB = TrainingJob()


def get_job() -> TrainingJob:
    """The process-wide job: the app has one training run at a time."""
    return _JOB
