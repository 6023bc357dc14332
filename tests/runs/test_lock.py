"""Two processes on one run folder: the lock holds while its process lives, and dies with it, kill -9
included; a run whose process is gone never says "running"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.core.errors import TunerError
from tuner.runs.lock import RunFolderBusy, claim, hold_new_run, in_use, release
from tuner.runs.status import read_status

REPO = Path(__file__).resolve().parents[2]
HOLDER = "import sys, time; from tuner.runs.lock import claim; claim(sys.argv[1]); print('held', flush=True); time.sleep(120)"


@pytest.fixture
def other_process():
    """Start a process that holds a run folder's lock; yields a function taking the folder."""
    started = []

    def hold(folder: Path) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        started.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_folder_held_by_another_process_is_refused_until_it_dies(tmp_path, other_process):
    run = tmp_path / "run"
    run.mkdir()
    holder = other_process(run)
    assert in_use(run)
    with pytest.raises(
        RunFolderBusy, match=f"another training is running in this run folder \\(process {holder.pid}\\)"
    ):
        claim(run)
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup: the kernel drops the lock with the process
    holder.wait()
    assert not in_use(run)
    assert claim(run) is True and in_use(run)
    release(run)
    assert not in_use(run)


def test_a_second_training_into_a_busy_output_dir_fails_before_writing(
    workspace, tiny_llama_dir, other_process
):
    from tests.tiny import make_config, write_data
    from tuner.train.run import train

    out = workspace / "out"
    out.mkdir()
    other_process(out)
    config = make_config(tiny_llama_dir, write_data(workspace / "d.jsonl"), output_dir="out")
    with pytest.raises(RunFolderBusy):
        train(config)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # its config.yaml was not written over


def test_claims_inside_one_process_are_counted(tmp_path):
    """The app's job prepares the folder in one thread and trains in another: both hold it."""
    run = tmp_path / "run"
    run.mkdir()
    hold_new_run(run)
    (run / "config.yaml").write_text("name: x\n")
    hold_new_run(run)  # the same process again: not "a folder holding a run"
    release(run)
    assert in_use(run)
    release(run)
    assert not in_use(run)
    with pytest.raises(TunerError, match="already holds a training run"):
        hold_new_run(run)  # a fresh claim finds the earlier run's files
    assert not in_use(run)


@pytest.mark.parametrize("written", ["running", "stopping", None])
def test_a_dead_run_says_interrupted_and_how_to_go_on(tmp_path, other_process, written):
    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (run / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"x")
    if written:
        (run / "status.json").write_text(json.dumps({"status": written, "started": 1.0}))
    else:  # killed while loading: only the events say what it was doing
        (run / "events.jsonl").write_text(json.dumps({"type": "status", "status": "loading"}) + "\n")
    holder = other_process(run)
    assert read_status(run)["status"] == (written or "loading")  # alive: believed
    holder.kill()
    holder.wait()
    status = read_status(run)
    assert status["status"] == "interrupted" and "resume it from checkpoint-4" in status["error"]
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    (run / "status.json").write_text(json.dumps({"status": "completed"}))
    assert read_status(run)["status"] == "completed"  # finished runs are left as they are


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    from tuner.runs import folders

    monkeypatch.setattr(folders.time, "strftime", lambda fmt: "20260101-000000")
    first = folders.new_run_dir("x", tmp_path)
    # the other process made its folder between this one's look and its mkdir
    monkeypatch.setattr(folders.Path, "exists", lambda self: False)
    second = folders.new_run_dir("x", tmp_path)
    assert (first.name, second.name) == ("20260101-000000", "20260101-000000-2")
