"""Train and Export tab handlers driving real (tiny) runs of the app's background job.

Every test waits for the process-wide job to finish, so that no run leaks into another test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest

from tuner.config.schema import TrainConfig
from tuner.core.errors import TunerError
from tuner.ui.common import run_choices

gr = pytest.importorskip("gradio")

QA = [
    ("Who are you?", "I am Tuna, the assistant of the tuner team."),
    ("What is your name?", "My name is Tuna."),
    ("Say hello.", "Hello!"),
    ("What is the capital of France?", "The capital of France is Paris."),
]
WAIT_S = 180


@pytest.fixture
def job():
    """The app's job singleton, idle before the test and waited for after it (even on failure)."""
    from tuner.train.job import get_job

    job = get_job()
    job.wait(WAIT_S)
    yield job
    if job.active:
        with contextlib.suppress(TunerError):
            job.stop(save=False)
    job.wait(WAIT_S)
    assert not job.active, "a training run outlived its test"


@pytest.fixture
def tiny_ws(workspace, tiny_llama_dir) -> Path:
    """The workspace with the tiny model inside it (the UI accepts local models only there) and data."""
    shutil.copytree(tiny_llama_dir, workspace / "models" / "tiny")
    with open(workspace / "qa.jsonl", "w", encoding="utf-8") as handle:
        for q, a in QA * 2:
            handle.write(json.dumps({"conversation": [{"input": q, "output": a}]}) + "\n")
    return workspace


def form_values(**overrides) -> list:
    from tests.tiny import TINY_TRAIN_SETTINGS
    from tuner.ui import form

    settings = dict(
        TINY_TRAIN_SETTINGS,
        name="tiny_ui",
        model="models/tiny",
        data_path="qa.jsonl",
        max_steps=1000,  # long enough that Stop / Cancel always land mid-run
        save_steps=2,
        save_total_limit=2,
        evaluation_inputs=["Who are you?"],
        evaluation_freq=2,
        evaluation_max_new_tokens=4,
    )
    settings.update(overrides)
    return form.to_form(TrainConfig(**settings))


def wait_for(job, predicate, what: str, timeout: float = WAIT_S) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = job.events(0)
        if predicate(events):
            return events
        if not job.active:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"never saw {what}; job {job.status}, error {job.error}, events {job.events(0)[-5:]}"
    )


def logged_steps(events) -> list[int]:
    return [e["step"] for e in events if e["type"] == "log" and e.get("loss") is not None]


def checkpointed(events) -> bool:
    return any(e["type"] == "checkpoint" for e in events) and any(e["type"] == "sample" for e in events)


def view(lang: str = "en") -> dict:
    """The live view as a freshly loaded page sees it: the poll handler with no remembered state."""
    from tuner.ui import train_tab

    out = train_tab.poll("", lang)
    return dict(zip(["seen", "status", "progress", "metrics", "chart", "answers", "log"], out, strict=True))


# ------------------------------------------------------------------------------------- train tab


def test_stop_and_save_then_reload_then_resume_latest(tiny_ws, job):
    from tuner.runs.folders import last_checkpoint
    from tuner.ui import train_tab

    values = form_values()
    started = train_tab.start(*values, "en")
    assert started.startswith("Started: work_dirs/tiny_ui/")
    run = started.removeprefix("Started: ")
    run_dir = tiny_ws / run
    with pytest.raises(TunerError, match="already active"):  # one training at a time
        train_tab.start(*values, "en")
    wait_for(job, checkpointed, "a checkpoint and an evaluation answer")

    # A page loaded while the run goes on shows it (twice from fresh state: the same view).
    live = view()
    assert "**Running**" in live["status"] or "**Starting**" in live["status"]
    assert "step " in live["progress"] and "/ 1000" in live["progress"]
    assert live["chart"].count("<circle") >= 1 and "Who are you?" in live["answers"]

    assert train_tab.stop("en").startswith("Stopping")
    assert job.wait(WAIT_S) == "stopped"
    stopped = view()
    assert "**Stopped and saved**" in stopped["status"] and "work_dirs/tiny_ui/" in stopped["status"]
    assert f"stopped: {run}/adapter" in stopped["status"]  # where the usable adapter is, readably
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    steps = logged_steps(job.events(0))
    assert f"step {steps[-1]} / 1000" in stopped["progress"]
    assert stopped["chart"].count("<circle") == len(steps)
    assert "Who are you?" in stopped["answers"] and "tokens/s" in stopped["metrics"]
    again = view()
    assert again == stopped  # a reload rebuilds exactly the same view
    assert train_tab.poll(again["seen"], "en")[1:] == [gr.skip()] * 6  # nothing new: nothing sent
    zh = view("zh")
    assert "**已停止并保存**" in zh["status"]

    # Resume with no run picked: the latest run of the form's name, from its last checkpoint, with the
    # run's own settings: a form that changes what the checkpoint learns is refused, naming the change.
    checkpoint_step = int(last_checkpoint(run_dir).name.split("-")[1])
    with pytest.raises(TunerError, match=f"max_steps: 1000 -> {checkpoint_step + 2}"):
        train_tab.resume(None, *form_values(max_steps=checkpoint_step + 2), "en")
    assert train_tab.resume(None, *values, "en") == f"Resumed: {started.removeprefix('Started: ')}"
    wait_for(job, lambda ev: len(logged_steps(ev)) >= 2, "two steps after resuming")
    train_tab.stop("en")
    assert job.wait(WAIT_S) == "stopped"
    resumed = logged_steps(job.events(0))
    assert resumed[:2] == [checkpoint_step + 1, checkpoint_step + 2]
    done = view()
    assert "**Stopped and saved**" in done["status"]
    # The curve covers the whole run: the first session's steps, then the resumed ones.
    assert done["chart"].count("<circle") == resumed[-1]
    assert f"step {resumed[-1]} / 1000" in done["progress"]


def test_cancel_leaves_no_adapter_and_a_picked_run_resumes(tiny_ws, job):
    from tuner.runs.folders import last_checkpoint
    from tuner.ui import train_tab

    started = train_tab.start(*form_values(name="tiny_cancel"), "en")
    run = started.removeprefix("Started: ")
    run_dir = tiny_ws / run
    wait_for(job, checkpointed, "a checkpoint")
    assert train_tab.cancel("en").startswith("Cancelling")
    assert job.wait(WAIT_S) == "cancelled"
    cancelled = view()
    assert "**Cancelled**" in cancelled["status"] and "nothing saved" in cancelled["status"]
    assert not (run_dir / "adapter").exists()
    checkpoint = last_checkpoint(run_dir)
    assert checkpoint is not None  # its checkpoints stay, so it can be resumed

    # The history says what is left; then resume the run picked there.
    h_status, _, _, outputs, _ = train_tab.show_run(run, "en")
    assert "**Cancelled**" in h_status and "final adapter" not in outputs and "✅ usable" in outputs
    assert train_tab.resume(run, *form_values(name="other_name"), "en") == f"Resumed: {run}"
    step = int(checkpoint.name.split("-")[1])
    wait_for(job, lambda ev: len(logged_steps(ev)) >= 1, "a step after resuming")
    assert logged_steps(job.events(0))[0] == step + 1  # continued where the checkpoint left off
    train_tab.stop("en")
    assert job.wait(WAIT_S) == "stopped"
    assert (run_dir / "adapter").is_dir()
    # One point per step in the live view and the history, though steps after the checkpoint were redone.
    last = logged_steps(job.events(0))[-1]
    assert view()["chart"].count("<circle") == last
    h_status, h_chart, _, outputs, _ = train_tab.show_run(run, "en")
    assert "**Stopped and saved**" in h_status and h_chart.count("<circle") == last
    assert "(final adapter)" in outputs


def test_engine_error_is_readable_and_the_next_start_works(tiny_ws, job):
    from tuner.ui import train_tab

    (tiny_ws / "bad.jsonl").write_text(
        '{"conversation": [{"input": "q", "output": "a"}]}\n{"conversation": [{"input": "q"}]}\n'
    )
    train_tab.start(*form_values(name="tiny_bad", data_path="bad.jsonl"), "en")
    assert job.wait(WAIT_S) == "failed"
    failed = view()
    assert "**Failed**" in failed["status"] and "bad.jsonl" in failed["status"]
    assert "Traceback" not in failed["status"] and failed["status"].count("❌") == 1
    assert failed["status"].count("bad.jsonl:2") == 1 and str(tiny_ws) not in failed["status"]
    # A data file that does not exist is refused before anything starts.
    with pytest.raises(TunerError, match="missing.jsonl"):
        train_tab.start(*form_values(data_path="missing.jsonl"), "en")
    train_tab.start(*form_values(max_steps=2, evaluation_inputs=[]), "en")
    assert job.wait(WAIT_S) == "completed"
    assert "**Completed**" in view()["status"]


# ------------------------------------------------------------------------------------- history, export


@pytest.fixture
def finished_run(tiny_ws, job) -> str:
    from tuner.ui import train_tab

    started = train_tab.start(*form_values(name="tiny_done", max_steps=4), "en")
    assert job.wait(WAIT_S) == "completed"
    return started.removeprefix("Started: ")


def test_history_shows_a_finished_run(finished_run):
    from tuner.ui import train_tab

    picker = run_choices()
    assert finished_run in picker["choices"] and picker["value"] == finished_run
    status, chart, config_text, outputs, answers = train_tab.show_run(finished_run, "en")
    assert "**Completed**" in status and finished_run in status
    assert chart.count("<circle") == 4  # every logged step
    assert "max_steps: 4" in config_text and "name: tiny_done" in config_text
    assert f"`{finished_run}/adapter` (final adapter)" in outputs and "checkpoint-4" in outputs
    assert "finished" in outputs and "✅ usable" in outputs
    assert "Who are you?" in answers and "**step 4**" in answers
    with pytest.raises(TunerError, match="outside the workspace"):
        train_tab.show_run("../../etc", "en")


def test_export_adapter_and_merge_with_shards(finished_run, tiny_ws):
    from tuner.ui import export_tab

    picker, adapter_out, merged_out, base = export_tab.sources(finished_run)
    assert (
        picker["value"] == f"{finished_run}/adapter" and f"{finished_run}/checkpoint-4" in picker["choices"]
    )
    assert base == "models/tiny"
    status, out = export_tab.export(picker["value"], adapter_out, False, "en")
    assert out == adapter_out and out in status and "adapter_model.safetensors" in status
    assert (tiny_ws / out / "adapter_config.json").is_file()
    with pytest.raises(TunerError, match="exists"):
        export_tab.export(picker["value"], adapter_out, False, "en")

    status, reply = export_tab.merge(
        base, f"{finished_run}/checkpoint-4", merged_out, "200KB", "fp32", True, "Who are you?", False, "en"
    )
    shards = sorted((tiny_ws / merged_out).glob("model-*.safetensors"))
    assert len(shards) > 1 and (tiny_ws / merged_out / "model.safetensors.index.json").is_file()
    assert merged_out in status and "float32" in status
    # The random tiny model does not end its reply on the end-of-turn token: a warning, not an error.
    assert reply.strip() and "⚠️" in status and "<|im_end|>" in status
    status, reply = export_tab.merge(
        base, f"{finished_run}/adapter", merged_out, "2GB", "auto", False, "", True, "en"
    )
    assert reply == "(not verified)" and "model.safetensors" in status  # overwritten, one shard
    assert not list((tiny_ws / merged_out).glob("model-*.safetensors"))
    with pytest.raises(TunerError, match="not a size"):
        export_tab.merge(base, f"{finished_run}/adapter", "exports/x", "lots", "auto", False, "", False, "en")
    # The GGUF button: the file the Modelfile names, next to it
    status = export_tab.write_gguf_file(merged_out, "q8_0", False, "en")
    assert (tiny_ws / merged_out / "model.gguf").is_file() and "ollama create" in status and "<|im_end|>" in status
    with pytest.raises(TunerError, match="Overwrite"):
        export_tab.write_gguf_file(merged_out, "q8_0", False, "en")
    with pytest.raises(TunerError, match="merge first"):
        export_tab.write_gguf_file(adapter_out, "f16", False, "en")
