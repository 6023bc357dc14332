"""The training benchmark's harness (bench/train_speed) on the CPU: the tiny shape, tuner and the plain loop.

The GPU numbers come from running it on the device (bench/README.md); here we check that a suite runs
each configuration in its own process, that every row carries the keys docs/performance.md reads and
what makes it again (command, commit, speed settings), and the arithmetic of MFU and of the result file.
"""

from __future__ import annotations

import gc
import json
import os
import tarfile
from dataclasses import fields
from pathlib import Path

import pytest

from bench.train_speed import cli, measure, profile, report, shapes, tools
from tuner.config.speed import SpeedSettings

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {
    "model",
    "method",
    "seq",
    "tool",
    "tok_s",
    "step_s",
    "peak_gib",
    "reserved_gib",
    "mfu",
    "gpu",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "steps",
    "warmup",
    "precision",
    "optimizer",
    "lora_dropout",
    "budget_gib",
    "argv",
    "commit",
    "suite",
    "error",
    "step_s_each",
    "step_cpu_s_each",
    "window_host",
}


def test_smoke_suite_runs_both_tools_one_process_each_and_rows_say_how_to_make_them_again(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNER_COMMIT", "0123abc")  # what a checkout without .git records
    for f in fields(SpeedSettings):
        monkeypatch.delenv(f.metadata["env"], raising=False)
    out = tmp_path / "results"
    assert (
        cli.main(["--suite", "smoke", "--out-dir", str(out), "--models-dir", str(tmp_path / "models")]) == 0
    )

    [results] = out.glob("*-smoke.json")
    rows = json.loads(results.read_text())
    assert [r["tool"] for r in rows] == ["tuner", "plain"]
    for row in rows:
        assert not REQUIRED - set(row), REQUIRED - set(row)
        assert row["error"] is None
        assert row["model"] == "tiny" and row["method"] == "lora" and row["seq"] == 48
        assert row["tok_s"] > 0 and row["step_s"] > 0 and row["mfu"] > 0
        assert row["steps"] == 2 and row["tag"] == "smoke" and row["lora_dropout"] == 0.1
        assert row["tok_s"] == pytest.approx(48 / row["step_s"], rel=0.01)
        # the suite step's own command, as typed, and the commit (git's where there is .git)
        assert row["argv"][:3] == ["python", "-m", "bench.train_speed"] and "--tiny" in row["argv"]
        assert row["suite"] == "smoke/tiny" and row["commit"]
    tuner, plain = rows
    assert tuner["speed_settings"] == SpeedSettings().as_dict() and tuner["plan"]
    assert "speed_settings" not in plain
    # the model folder was built by a child of its own, then each configuration ran in a child; the
    # logs came back packed in one file
    with tarfile.open(results.with_name(results.stem + ".logs.tgz")) as tar:
        logs = sorted(Path(name).name for name in tar.getnames() if name.endswith(".log"))
    assert logs == ["prepare-tiny.log", "tiny-lora-48-plain.log", "tiny-lora-48-tuner.log", "tiny.log"]
    # the model folder is built once and reused; the table renders both rows with the ratio
    assert (tmp_path / "models" / "tiny" / shapes.COMPLETE_MARK).is_file()
    table = report.report(rows)
    assert "| tiny | lora | 48 | tuner |" in table and "| 1.00 |" in table


def test_a_tool_is_one_function_the_row_times_through_the_step_clock(tmp_path, monkeypatch):
    # The contract a third tool meets: begin() once loaded, step_end() after each optimizer step,
    # loss() when it has one; the row does the rest (timing, MFU, memory, provenance).
    calls = []

    def fake(job):
        assert job.lora["dropout"] == 0.0 and len(job.rows) == 3 and len(job.rows[0]) == 32
        assert os.environ["TUNER_GPU_MEMORY_GIB"] == "8"  # the variant's variables, while it runs
        job.clock.begin()
        for step, _ in enumerate(job.rows):
            job.clock.loss(1.5)
            if step == 1:  # inside the timed window (after the warm-up step)
                gc.collect()
            job.clock.step_end()
        calls.append(job.spec.label)
        return {"load_s": 0.0, "precision": "float32", "optimizer": "none"}

    monkeypatch.setitem(tools.TOOLS, "fake", tools.Tool(fake))
    monkeypatch.setattr(cli, "TOOLS", tools.TOOLS)
    monkeypatch.delenv("TUNER_GPU_MEMORY_GIB", raising=False)
    argv = [
        "--tiny",
        "--seq",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--variant",
        "cap8:env.TUNER_GPU_MEMORY_GIB=8",
    ]
    opts = cli.parse_args([*argv, "--lora-dropout", "0"])
    opts.models_dir = str(tmp_path / "models")
    row = measure.measure(measure.Spec("tiny", "lora", 32, "fake", variant="cap8"), opts)
    assert calls == ["tiny-lora-32-fake-cap8"] and row["error"] is None
    assert row["tok_s"] > 0 and row["loss_last"] == 1.5 and row["lora_dropout"] == 0.0
    assert row["budget_gib"] == 8.0 and "TUNER_GPU_MEMORY_GIB" not in os.environ
    assert row["argv"][-1] == "0" and "speed_settings" not in row
    # each timed step, and the garbage collections inside them (the forced full one at least)
    assert len(row["step_s_each"]) == 2 and max(row["step_s_each"]) == row["step_s_max"]
    assert row["window_gc"]["gen2"] >= 1 and row["window_gc"]["seconds"] > 0
    # the training thread's CPU time per timed step: the first holds the forced collection
    host = row["window_host"]
    assert len(row["step_cpu_s_each"]) == 2 and row["step_cpu_s_each"][0] >= 0.5 * row["window_gc"]["seconds"]
    assert sum(row["step_cpu_s_each"]) == pytest.approx(host["thread_cpu_s"], abs=1e-3)
    assert host["thread_cpu_s"] <= host["process_cpu_s"] + 1e-3 and host["voluntary_switches"] >= 0
    assert not any(isinstance(getattr(c, "__self__", None), measure.StepClock) for c in gc.callbacks)
    # an emulated card holds every tool, and the child it runs in is told so; it needs a GPU
    carded = cli.parse_args([*argv, "--card-gib", "12"])
    assert cli.child_argv(measure.Spec("tiny", "lora", 32, "fake"), carded, tmp_path / "r.json")[-2:] == [
        "--card-gib",
        "12",
    ]
    carded.models_dir = opts.models_dir
    row = measure.measure(measure.Spec("tiny", "lora", 32, "fake"), carded)
    assert row["card_gib"] == row["budget_gib"] == 12.0 and len(calls) == 1
    assert row["error"] == "--card-gib emulates a smaller GPU: it needs a CUDA GPU"


def test_in_process_rows_leave_a_tool_that_patches_libraries_to_a_child(tmp_path, monkeypatch):
    ran = {"here": [], "child": []}
    monkeypatch.setattr(
        cli, "measure", lambda spec, opts: ran["here"].append(spec.tool) or {"tool": spec.tool}
    )
    monkeypatch.setattr(
        cli, "drive", lambda specs, opts, out: ran["child"].extend(s.tool for s in specs) or []
    )
    monkeypatch.setattr(report, "append_rows", lambda path, rows: None)
    monkeypatch.setattr(report, "report", lambda rows: "")
    argv = [
        "--shape",
        "llama2-7b",
        "--tool",
        "unsloth,plain,tuner",
        "--in-process",
        "--out",
        str(tmp_path / "r.json"),
    ]
    cli.main(argv)
    assert ran == {"here": ["plain", "tuner"], "child": ["unsloth"]}


def test_flops_per_token_matches_the_issue_definition():
    dims = shapes.shape_dims("llama3-8b")
    n = shapes.linear_params(dims)
    # 32 x (q,o 4096x4096; k,v 4096x1024; 3 MLP 4096x14336) + LM head 4096 x 128256
    assert n == 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 4096 * 128256
    seq = 4096
    causal = 6 * 32 * 4096 * (seq + 1)  # 3 x (2 products x 2 FLOPs) x layers x d x S(S+1)/2 / S
    assert shapes.flops_per_token(dims, [seq]) == pytest.approx(4 * n + causal)
    # NeMo's quoted 12,473 tok/s on an H100 is ~41% of its 989 TFLOP/s datasheet peak by this count
    assert 12473 * shapes.flops_per_token(dims, [seq]) / 989e12 == pytest.approx(0.42, abs=0.01)
    # packing: attention shrinks with the sample length, the 4N part does not
    packed = shapes.flops_per_token(dims, [512] * 8)
    assert 4 * n < packed < shapes.flops_per_token(dims, [seq])


def test_append_rows_keeps_earlier_rows(tmp_path):
    path = tmp_path / "r.json"
    report.append_rows(path, [{"a": 1}])
    report.append_rows(path, [{"a": 2}, {"a": 3}])
    assert json.loads(path.read_text()) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.lock"]


def test_specs_and_names():
    opts = cli.parse_args(["--all", "--sample-len", "512"])
    specs = cli.specs_from(opts)
    assert len(specs) == 3 * 2 * 3 * 2
    assert {s.sample_len for s in specs if s.tool == "plain"} == {None}
    assert specs[0].label == "llama2-7b-qlora-512-pack512-tuner"
    assert measure.slug("NVIDIA H200") == "h200"
    # variants are tuner's; the peer takes neither them nor packed rows
    opts = cli.parse_args(["--tool", "unsloth,tuner", "--variant", "a", "--variant", "b:env.TUNER_LIGER=on"])
    assert [s.label for s in cli.specs_from(opts)] == [
        "llama2-7b-qlora-512-unsloth",
        "llama2-7b-qlora-512-tuner-a",
        "llama2-7b-qlora-512-tuner-b",
    ]
    with pytest.raises(SystemExit):
        cli.parse_args(["--shape", "llama9"])


def test_idle_gaps_names_the_waits_and_the_host_work_inside_them():
    from types import SimpleNamespace as NS

    def event(kind, name, start, end, stack=()):
        return NS(
            device_type=NS(name=kind), name=name, time_range=NS(start=start, end=end), stack=list(stack)
        )

    events = [
        event("CUDA", "gemm", 0, 1000),
        event("CUDA", "overlapping", 500, 1100),
        event("CUDA", "flash_bwd", 1150, 2000),  # 50 us later: below the threshold
        event("CPU", "aten::item", 2100, 2900, ["site-packages/transformers/trainer.py(10): log"]),
        event("CUDA", "adamw", 3000, 3100),  # 1 ms after flash_bwd
        event("CUDA", "embedding", 3400, 3500),  # 0.3 ms after adamw
    ]
    text = profile.idle_gaps(events, steps=1)
    lines = text.splitlines()
    assert lines[0] == "GPU idle gaps >= 200 us: 2.0 per step, 1.3 ms per step"
    assert lines[2] == "1.00 ms idle, after 'flash_bwd', before 'adamw'"
    assert "aten::item" in lines[3] and "transformers/trainer.py(10): log" in lines[3]
    assert lines[4] == "0.30 ms idle, after 'adamw', before 'embedding'"


def test_sync_tracer_counts_synchronizing_ops_by_their_python_call_site(monkeypatch):
    # --profile-syncs: PyTorch's sync debug mode warns at every synchronizing CUDA op; the tracer
    # counts them by the frames outside torch that asked, and lets every other warning through.
    import warnings

    import torch

    from bench.probes.sync_trace import SyncTracer

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def read_back_loss():
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)

    other = []
    monkeypatch.setattr(warnings, "showwarning", lambda *args, **kwargs: other.append(str(args[0])))
    tracer = SyncTracer()
    for _ in range(4):
        read_back_loss()
    warnings.warn("something else", UserWarning, stacklevel=1)
    tracer.disable()
    read_back_loss()  # after disable: not counted
    assert modes == ["warn", "default"]
    [(site, count)] = tracer.sites.items()
    assert count == 4
    assert site.startswith("tests/bench/test_bench.py:") and " read_back_loss < " in site
    assert "test_sync_tracer_counts" in site
    assert other[0] == "something else"
    report = tracer.report("row", steps=2)
    assert "2.0 per step" in report and "2.0/step" in report


def test_device_memory_is_sampled_only_at_the_warmup_and_window_ends(monkeypatch):
    # cudaMemGetInfo is a driver call that some drivers take milliseconds for: sampled after every
    # step it would land inside the timed steps. Here: at the warm-up's end (before the clock reads,
    # so not in the first timed step) and at the window's end.
    import torch

    samples = []

    def mem_get_info():
        samples.append(len(clock.ends))
        return 10 * 2**30 - len(samples) * 2**30, 80 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(measure, "_sync", lambda: None)
    clock = measure.StepClock(sync_steps={3, 13}, memory_steps={3, 13})
    for _ in range(13):
        clock.step_end()
    assert samples == [2, 12]  # taken before the 3rd and the 13th step end were recorded
    assert clock.device_used == 72 * 2**30 and len(clock.mem_get_info_s) == 2


def test_the_budget_table_puts_each_budget_on_a_line_and_says_when_a_peer_does_not_fit():
    def row(tool, tok_s, budget=None, dropout=0.1, device=6.0):
        return dict(model="llama2-7b", tool=tool, tok_s=tok_s, budget_gib=budget, lora_dropout=dropout,
                    peak_gib=5.0, device_used_gib=device, error=None)  # fmt: skip

    rows = [
        row("unsloth", 10215, dropout=0.0, device=9.1),
        row("plain", 5620, device=10.0),
        row("tuner", 14971),
        row("tuner", 8011, budget=8.0, device=7.6),
        row("tuner", 8647, budget=8.0, dropout=0.0, device=7.58),
        row("tuner", 1, budget=12.0) | {"error": "out of memory"},
    ]
    lines = report.budget_table(rows).splitlines()
    assert (
        lines[0]
        == "| shape | budget | tuner, dropout 0 | tuner, dropout 0.1 | plain, dropout 0.1 | unsloth, dropout 0 |"
    )
    assert lines[2].startswith(
        "| llama2-7b | 8 GiB | 8,647, peak 5.00, device 7.58 | 8,011, peak 5.00, device 7.60 |"
    )
    assert lines[2].endswith(
        "| 5,620, peak 5.00, device 10.00 (over) | 10,215, peak 5.00, device 9.10 (over) |"
    )
    assert lines[3].startswith("| llama2-7b | none |  | 14,971,") and "(over)" not in lines[3]
    assert len(lines) == 4  # the failed 12 GiB row makes no line


def test_a_row_knows_its_commit_from_the_caller_or_from_git(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(measure, "REPO", tmp_path)
    monkeypatch.delenv("TUNER_COMMIT", raising=False)
    assert measure.commit() is None  # no .git, nothing passed: unknown, not invented
    monkeypatch.setenv("TUNER_COMMIT", "abc123")
    assert measure.commit() == "abc123"  # the device's copy: what the caller passed

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "tuner").mkdir()
    (tmp_path / "tuner" / "x.py").write_text("a = 1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "tuner"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    # the variable wins: the device's copy carries a .git whose HEAD is not the tree it runs
    assert measure.commit() == "abc123"
    monkeypatch.delenv("TUNER_COMMIT")
    assert measure.commit() == head
    (tmp_path / "tuner" / "x.py").write_text("a = 2\n")
    assert measure.commit() == head + "+dirty"
