"""The resume contract (tuner.runs.resume) on real tiny trainings: a run resumes with its own
config.yaml, only safe keys may change, a finished run trains no further step; and the run folder's
lock, kill -9 included (tests/runs/ tests the lock itself)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.tiny import make_config, write_data
from tuner.__main__ import main
from tuner.core.errors import TunerError
from tuner.runs.events import read_events
from tuner.runs.resume import RunFinished
from tuner.runs.status import read_status
from tuner.train.callbacks import RunControl


def _cancel_at(step: int, control: RunControl):
    def listener(event):
        if event["type"] == "log" and event.get("step") == step:
            control.request_stop(save=False)

    return listener


def test_resume_uses_the_runs_own_config_and_refuses_unsafe_changes(workspace, tiny_llama_dir, capsys):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    other = write_data(workspace / "other.jsonl", pairs=[("Hi", "Hello")] * 4)
    preset = workspace / "mine.yaml"
    settings = make_config(tiny_llama_dir, data, name="mine", max_steps=6, save_steps=2).to_dict()
    preset.write_text(yaml.safe_dump(settings), encoding="utf-8")
    control = RunControl()
    cancelled = train(
        make_config(tiny_llama_dir, data, **{**settings, "name": "mine"}),
        control=control,
        listener=_cancel_at(3, control),
    )
    assert cancelled.status == "cancelled"
    saved = (cancelled.run_dir / "config.yaml").read_text(encoding="utf-8")

    # The engine refuses a config that changes what the checkpoint learned, naming each change.
    changed = make_config(tiny_llama_dir, other, name="mine", max_steps=60, save_steps=2)
    with pytest.raises(
        TunerError, match=r"data_path: .*max_steps: 6 -> 60.*only these may change: save_steps"
    ):
        train(changed, resume=True, run_dir=cancelled.run_dir)
    # So does the CLI for --set, before anything loads.
    assert main(["train", "mine.yaml", "--resume", "--set", "max_steps=60"]) == 2
    assert "--set max_steps would change what it learns" in capsys.readouterr().err

    # Someone edits the preset meanwhile: `train PRESET --resume` still continues the run as it was.
    preset.write_text(
        yaml.safe_dump({**settings, "data_path": str(other), "max_steps": 60}), encoding="utf-8"
    )
    assert main(["train", "mine.yaml", "--resume", "--set", "logging_steps=2"]) == 0
    # the loss Trainer reports covers this session only, and says so
    said = re.search(
        r"completed after 6 steps, mean train loss [\d.]+ \(steps (\d)-6, resumed at (\d)\)",
        capsys.readouterr().out,
    )
    assert said and int(said.group(1)) == int(said.group(2)) + 1
    after = yaml.safe_load((cancelled.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert after == {**yaml.safe_load(saved), "logging_steps": 2}  # the safe change is recorded
    assert json.loads((cancelled.run_dir / "status.json").read_text())["steps"] == 6


def test_a_finished_run_says_so_and_trains_no_further_step(workspace, tiny_llama_dir, capsys):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl")
    config = make_config(tiny_llama_dir, data, name="done", max_steps=4, save_steps=2)
    done = train(config)
    adapter = done.run_dir / "adapter" / "adapter_model.safetensors"
    before = (adapter.stat().st_mtime_ns, sorted(p.name for p in done.run_dir.iterdir()))
    events_before = len(read_events(done.run_dir))

    with pytest.raises(RunFinished, match="this run is finished \\(completed after 4 steps\\)"):
        train(config, resume=True)
    assert main(["train", str(done.run_dir / "config.yaml"), "--resume"]) == 0  # not an error: a fact
    assert "this run is finished" in capsys.readouterr().out
    assert (adapter.stat().st_mtime_ns, sorted(p.name for p in done.run_dir.iterdir())) == before
    assert len(read_events(done.run_dir)) == events_before  # not one step, not one event

    # Killed during its final save: every step is in the last checkpoint, the adapter is missing.
    import shutil

    shutil.rmtree(done.run_dir / "adapter")
    (done.run_dir / "status.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(RunFinished, match="final save did not finish.*checkpoint-4"):
        train(config, resume=True)
    assert read_status(done.run_dir)["status"] == "interrupted"


def test_an_output_dir_holding_a_run_is_refused_not_overwritten(workspace, tiny_llama_dir):
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl")
    first = train(make_config(tiny_llama_dir, data, max_steps=2, save_steps=2, output_dir="out/run"))
    weights = (first.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    config_text = (first.run_dir / "config.yaml").read_text()
    with pytest.raises(TunerError, match="already holds a training run.*--resume"):
        train(make_config(tiny_llama_dir, data, max_steps=3, lr=1e-3, output_dir="out/run"))
    assert (first.run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert (first.run_dir / "config.yaml").read_text() == config_text
    # resuming the config that trained there finds that folder (and says it is finished)
    with pytest.raises(RunFinished, match="out/run: this run is finished"):
        train(make_config(tiny_llama_dir, data, max_steps=2, save_steps=2, output_dir="out/run"), resume=True)


KILL_AT_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys
    from tests.tiny import make_config
    from tuner.train.run import train

    model, data, name, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def listener(event):
        if event["type"] == "checkpoint" and event["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, as a power cut or the OOM killer

    train(make_config(model, data, name=name, max_steps=6, save_steps=2), listener=listener)
    """
)


def _train_and_kill(workspace, tiny_llama_dir, data, kill_points: dict[str, int]) -> dict:
    """Train one run per name in its own process (all at once) and kill -9 each at its checkpoint."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # one thread each: the processes run side by side, and a tiny model gains nothing from more
    env = {**os.environ, "TUNER_WORKSPACE": str(workspace), "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", KILL_AT_CHECKPOINT, str(tiny_llama_dir), str(data), name, str(step)],
            cwd=workspace,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, step in kill_points.items()
    }
    for process in processes.values():
        _, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, err[-2000:]
    return {name: next((workspace / "work_dirs" / name).iterdir()) for name in kill_points}


def test_kill_9_mid_run_then_at_the_final_checkpoint(workspace, tiny_llama_dir):
    """kill -9 at chosen points: the status tells the truth, resume continues from the last complete
    checkpoint, and a run killed after its last step is finished, never trained one step more."""
    from tuner.train.run import train

    data = write_data(workspace / "d.jsonl", repeat=2)
    runs = _train_and_kill(workspace, tiny_llama_dir, data, {"mid": 4, "end": 6})  # 6: before the final save

    run_dir = runs["mid"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "running"  # as the kill left it
    status = read_status(run_dir)
    assert status["status"] == "interrupted" and "resume it from checkpoint-4" in status["error"]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"  # corrected on disk
    resumed = train(make_config(tiny_llama_dir, data, name="mid", max_steps=6, save_steps=2), resume=True)
    assert resumed.run_dir == run_dir and resumed.status == "completed" and resumed.steps == 6

    run_dir = runs["end"]
    with pytest.raises(RunFinished, match="all 6 steps are trained"):
        train(make_config(tiny_llama_dir, data, name="end", max_steps=6, save_steps=2), resume=True)
    assert not (run_dir / "checkpoint-7").exists() and not (run_dir / "adapter").exists()
