"""The resume contract on run folders built by hand (no training: tests/train/test_resume.py trains)."""

from __future__ import annotations

import json

import pytest

from tuner.config.files import config_from_dict, save_config
from tuner.core.errors import ConfigError, TunerError
from tuner.runs.resume import RunFinished, check_resumable, finished_message, resume_overrides


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "work_dirs" / "x" / "1"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / "adapter_model.safetensors").write_bytes(b"x")
    (run / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 8}))
    save_config(config_from_dict({"name": "x", "data_path": "d.jsonl", "max_steps": 8}), run / "config.yaml")
    return run


def test_set_on_resume_changes_only_safe_keys_and_unknown_keys_get_a_did_you_mean(run):
    assert resume_overrides(run, ["save_steps=7", "logging_steps=3"]).save_steps == 7
    assert resume_overrides(run, ["report_to=tensorboard"]).report_to == "tensorboard"
    with pytest.raises(TunerError, match="--set lr, data_path would change what it learns.*save_steps"):
        resume_overrides(run, ["lr=1e-3", "data_path=other.jsonl"])
    with pytest.raises(ConfigError, match="learning_rate: unknown key; did you mean 'lr'"):
        resume_overrides(run, ["learning_rate=1e-3"])


def test_a_config_differing_in_unsafe_keys_is_refused_naming_each(run):
    saved = config_from_dict({"name": "x", "data_path": "d.jsonl", "max_steps": 8})
    assert check_resumable(run, saved) == []
    wanted = config_from_dict({"name": "x", "data_path": "d.jsonl", "max_steps": 8, "evaluation_freq": 5})
    assert check_resumable(run, wanted) == ["evaluation_freq"]
    wanted = config_from_dict({"name": "x", "data_path": "e.jsonl", "max_steps": 9})
    with pytest.raises(TunerError, match=r"data_path: 'd.jsonl' -> 'e.jsonl'; max_steps: 8 -> 9"):
        check_resumable(run, wanted)


def test_finished_means_completed_or_every_step_checkpointed(run):
    assert finished_message(run) is None  # 4 of 8 steps
    (run / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 8}))
    assert "final save did not finish" in finished_message(run)
    (run / "adapter").mkdir()
    (run / "status.json").write_text(json.dumps({"status": "completed", "steps": 8}))
    with pytest.raises(RunFinished, match="this run is finished \\(completed after 8 steps\\)"):
        check_resumable(run, config_from_dict({"name": "x", "data_path": "d.jsonl", "max_steps": 8}))


def test_resume_of_a_runs_config_yaml_continues_that_run_not_the_latest(run, monkeypatch):
    from tuner.cli.train import resume_target

    monkeypatch.setenv("TUNER_WORKSPACE", str(run.parents[2]))
    (run / ".lock").write_text("")  # killed before its first event: only the lock and config.yaml
    later = run.parent / "2"
    later.mkdir()
    (later / "config.yaml").write_text((run / "config.yaml").read_text())
    assert resume_target(str(run / "config.yaml"), None) == run
    assert resume_target(str(run / "config.yaml"), str(later)) == later  # --run-dir wins
