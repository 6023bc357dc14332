"""Training under faults: the disk fills up mid-run, Ctrl-C or SIGTERM. The user reads what happened
and what to do, and status.json never stays "running"."""

from __future__ import annotations

import errno
import json

import pytest

from tests.tiny import make_config, write_data
from tuner.core.errors import StorageError
from tuner.runs.status import read_status


def _fail_at(step: int, exc: BaseException):
    def listener(event):
        if event["type"] == "log" and event.get("step") == step:
            raise exc

    return listener


def test_a_full_disk_mid_run_says_so_and_the_status_says_failed(workspace, tiny_llama_dir):
    from tuner.train.run import train

    config = make_config(tiny_llama_dir, write_data(workspace / "d.jsonl"), name="full")
    full = OSError(errno.ENOSPC, "No space left on device", str(workspace / "work_dirs"))
    with pytest.raises(StorageError, match="cannot write: the disk is full; free some space"):
        train(config, listener=_fail_at(2, full))
    (run_dir,) = (workspace / "work_dirs" / "full").iterdir()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "the disk is full" in status["error"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(143)])  # Ctrl-C; SIGTERM in the CLI
def test_ctrl_c_or_sigterm_leave_the_run_interrupted_not_running(workspace, tiny_llama_dir, stop):
    from tuner.train.run import train

    config = make_config(tiny_llama_dir, write_data(workspace / "d.jsonl"), name="stopped")
    with pytest.raises(type(stop)):
        train(config, listener=_fail_at(2, stop))
    (run_dir,) = (workspace / "work_dirs" / "stopped").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert read_status(run_dir)["status"] == "interrupted"


def test_stop_then_cancel_the_second_is_told_what_the_first_decided(workspace, tiny_llama_dir, monkeypatch):
    import threading

    import tuner.train.run as train_module
    from tuner.core.errors import JobError
    from tuner.train.job import TrainingJob
    from tuner.train.run import RunResult

    ended = threading.Event()

    def slow_train(config, *, run_dir, resume, control, listener):
        ended.wait(30)
        return RunResult(run_dir, "stopped", run_dir / "adapter", 3, 0.5)

    monkeypatch.setattr(train_module, "train", slow_train)
    job = TrainingJob()
    run_dir = job.start(make_config(tiny_llama_dir, write_data(workspace / "d.jsonl")))
    job.stop(save=True)
    with pytest.raises(JobError, match="already asked to stop and save"):
        job.cancel()  # not "cancelling" while the run saves its adapter
    ended.set()
    assert job.wait(timeout=30) == "stopped"
    from tuner.runs.lock import in_use

    assert not in_use(run_dir)  # the job gave the folder back


def test_tokens_per_second_of_a_late_delivered_log_line_is_timed_by_its_own_step(monkeypatch):
    """Deferred logging hands the last step's line over right after the one before: timed by its
    delivery, a 2-core CPU showed 549,680 tok/s."""
    from types import SimpleNamespace

    from tuner.runs.events import EventLog
    from tuner.train import callbacks
    from tuner.train.callbacks import EventCallback, RunControl

    clock = {"now": 0.0}
    monkeypatch.setattr(callbacks.time, "time", lambda: clock["now"])
    events = EventLog()
    callback = EventCallback(events, RunControl())
    state = SimpleNamespace(global_step=0, max_steps=2, num_input_tokens_seen=0, epoch=0.0)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    callback.on_train_begin(None, state, control)
    for step in (1, 2):  # each step takes a second and sees 100 tokens
        clock["now"] += 1.0
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        callback.on_step_end(None, state, control)
    for step, delivered in ((1, 2.0), (2, 2.01)):  # both lines arrive at the end, 10 ms apart
        clock["now"] = delivered
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        callback.on_log(None, state, control, logs={"loss": 1.0})
    assert [e["tokens_per_s"] for e in events.since(0) if e["type"] == "log"] == [100.0, 100.0]


def test_samples_dropped_by_truncation_are_said_in_words(workspace, tiny_llama_dir, capsys):
    from tuner.__main__ import main
    from tuner.config.files import save_config
    from tuner.runs.events import read_events

    long_question = "Tell me " + "more and more " * 60 + "?"
    data = write_data(workspace / "d.jsonl", pairs=[("Hi?", "Hello."), (long_question, "No.")] * 2)
    save_config(make_config(tiny_llama_dir, data, name="cut", max_steps=1), workspace / "cut.yaml")
    assert main(["train", "cut.yaml"]) == 0
    said = "2 sample(s) were left out: max_length 64 cut away their whole answer"
    assert said in capsys.readouterr().err  # on the console, not only inside a JSON blob
    (run_dir,) = (workspace / "work_dirs" / "cut").iterdir()
    warnings = [e["message"] for e in read_events(run_dir) if e["type"] == "warning"]
    assert warnings and said in warnings[0] and "check-data" in warnings[0]


def test_a_run_failing_before_it_starts_gives_its_folder_back(workspace, tiny_llama_dir, monkeypatch):
    """In the app's long-lived process a folder left claimed would refuse every later resume."""
    import tuner.train.run as run_module
    from tuner.runs.lock import in_use

    def no_log_file(run_dir):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "train.log"))

    monkeypatch.setattr(run_module, "_attach_log_file", no_log_file)
    config = make_config(tiny_llama_dir, write_data(workspace / "d.jsonl"), name="early")
    with pytest.raises(OSError):
        run_module.train(config)
    (run_dir,) = (workspace / "work_dirs" / "early").iterdir()
    assert not in_use(run_dir)


def test_a_disk_full_while_checkpointing_keeps_the_last_checkpoint_and_resumes(
    workspace, tiny_llama_dir, monkeypatch
):
    """torch.save failing mid-checkpoint (its words on a full disk): the run fails saying so, no half
    checkpoint is published, and once there is space again the run resumes from the last complete one."""
    import torch

    from tuner.runs.folders import checkpoints
    from tuner.train.run import train

    real_save, full = torch.save, {"on": False}

    def save(*args, **kwargs):
        if full["on"]:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(*args, **kwargs)

    def fill_the_disk_after_the_first_checkpoint(event):
        if event["type"] == "checkpoint":
            full["on"] = True

    monkeypatch.setattr(torch, "save", save)
    config = make_config(
        tiny_llama_dir, write_data(workspace / "d.jsonl"), name="full", max_steps=4, save_steps=2
    )
    with pytest.raises(StorageError, match="most likely because the disk is full"):
        train(config, listener=fill_the_disk_after_the_first_checkpoint)
    (run_dir,) = (workspace / "work_dirs" / "full").iterdir()
    assert [p.name for p in checkpoints(run_dir)] == ["checkpoint-2"]
    assert not (run_dir / "checkpoint-4").exists()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    full["on"] = False  # space freed
    resumed = train(config, resume=True)
    assert resumed.status == "completed" and resumed.steps == 4
