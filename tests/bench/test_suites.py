"""bench/suites.toml: every named suite is one device call of today's harness, in today's names.

Each bench step parses as options of ``python -m bench.train_speed``; a variant names only speed-setting
variables (or the memory budget) and TrainConfig keys, never a removed TUNER_* switch; a suite's steps fit
one 10-minute call; probe scripts and test paths exist.
"""

from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path

import pytest

from bench.train_speed import cli, suites
from tuner.config.schema import TrainConfig
from tuner.config.speed import SpeedSettings

REPO = Path(__file__).resolve().parents[2]
SUITES = suites.load()
SETTING_VARIABLES = {f.metadata["env"] for f in fields(SpeedSettings)}
CONFIG_KEYS = {f.name for f in fields(TrainConfig)}


def bench_steps():
    return [(name, step) for name, suite in SUITES.items() for step in suite["steps"] if "bench" in step]


def test_the_suites_the_docs_name_are_there():
    assert {"smoke", "targets", "short-samples", "memory", "long-context", "gpu-tests"} <= set(SUITES)
    assert {"settings-lora", "settings-qlora", "budgets-llama2", "budgets-llama3"} <= set(SUITES)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_a_suite_fits_one_device_call(name):
    assert sum(step["timeout"] for step in SUITES[name]["steps"]) <= 600
    assert SUITES[name].get("setup", "wheels") in ("none", "wheels", "deepspeed", "peer")


@pytest.mark.parametrize(
    ("name", "step"), bench_steps(), ids=lambda v: v if isinstance(v, str) else v["name"]
)
def test_each_bench_step_parses_and_names_only_todays_settings(name, step):
    opts = cli.parse_args(shlex.split(step["bench"].format(logs="/tmp/logs", out="/tmp/out")))
    for _variant, overrides in opts.variants:
        assert set(overrides["env"]) <= SETTING_VARIABLES, overrides["env"]
        assert set(overrides["set"]) <= CONFIG_KEYS, overrides["set"]
        SpeedSettings.from_env(overrides["env"])  # the values are allowed ones
    if "unsloth" in opts.tool:
        assert SUITES[name]["setup"] == "peer"  # Unsloth comes from its own site folder


def test_probe_scripts_and_test_paths_exist():
    for suite in SUITES.values():
        for step in suite["steps"]:
            if "probe" in step:
                assert (REPO / "bench" / "probes" / f"{step['probe'].split()[0]}.py").is_file()
            if "pytest" in step:
                assert (REPO / step["pytest"].split()[0]).exists()


def test_a_dry_run_prints_each_step_with_the_results_file_and_logs(tmp_path, capsys):
    assert cli.main(["--suite", "targets", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[suite]")]
    assert [line.split()[0] for line in lines] == [step["name"] for step in SUITES["targets"]["steps"]]
    assert all(f"--out {tmp_path}/" in line and "-targets.json" in line for line in lines)


def test_no_removed_switch_is_named():
    text = (REPO / "bench" / "suites.toml").read_text()
    removed = ["TUNER_VARLEN", "TUNER_CUDNN_ATTENTION", "TUNER_LOSS_CHUNKS", "TUNER_DROPOUT_GRAD_KERNEL",
               "TUNER_STEP_OVERHEAD", "TUNER_DEFERRED_LOGGING", "TUNER_ASYNC_BATCH_COPY", "TUNER_SKIP_PACKED_SCAN",
               "TUNER_LORA_DROPOUT_KERNEL", "TUNER_CHECKPOINTING", "TUNER_CHECKPOINT_LAYERS", "TUNER_EMBEDDING_ON_CPU",
               "TUNER_OFFLOAD_COPY_STREAM", "TUNER_DIRECT_DEQUANT"]  # fmt: skip
    assert [name for name in removed if name in text] == []


def test_a_step_past_its_timeout_is_ended_with_the_processes_it_started(tmp_path):
    import os
    import sys
    import time

    # the step starts a child of its own (as the bench driver does); both must end at the timeout
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    started = time.perf_counter()
    assert suites._run([sys.executable, "-c", code], tmp_path / "step.log", 3, dict(os.environ)) == "timeout"
    assert time.perf_counter() - started < 30
    status = Path(f"/proc/{pid_file.read_text()}/status")
    time.sleep(0.5)
    assert not status.exists() or "State:\tZ" in status.read_text()  # gone, or a zombie left to reap
