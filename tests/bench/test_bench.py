"""The training benchmark's harness (bench/bench_train.py) on the CPU: the tiny shape, both tools.

The GPU numbers come from running it on the device (bench/README.md); here we check that the driver
runs each configuration in its own process, that every row carries the keys docs/benchmarks.md reads,
and the arithmetic of MFU and of the result file.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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
    "error",
}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_both_tools_one_process_each(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "results" / "run.json"
    argv = ["--tiny", "--tool", "tuner,plain", "--seq", "48", "--steps", "2", "--warmup", "1"]
    argv += ["--out", str(out), "--models-dir", str(tmp_path / "models"), "--tag", "smoke"]
    assert bench.main(argv) == 0

    rows = json.loads(out.read_text())
    assert [r["tool"] for r in rows] == ["tuner", "plain"]
    for row in rows:
        assert not REQUIRED - set(row), REQUIRED - set(row)
        assert row["error"] is None
        assert row["model"] == "tiny" and row["method"] == "lora" and row["seq"] == 48
        assert row["tok_s"] > 0 and row["step_s"] > 0 and row["mfu"] > 0
        assert row["steps"] == 2 and row["tag"] == "smoke"
        assert row["tok_s"] == pytest.approx(48 / row["step_s"], rel=0.01)
    # the model folder was built by a child of its own, then each configuration ran in a child
    logs = sorted(p.name for p in (tmp_path / "results" / "run.logs").iterdir())
    assert logs == ["prepare-tiny.log", "tiny-lora-48-plain.log", "tiny-lora-48-tuner.log"]
    # the model folder is built once and reused; the table renders both rows with the ratio
    assert (tmp_path / "models" / "tiny" / bench.COMPLETE_MARK).is_file()
    table = bench.report(rows)
    assert "| tiny | lora | 48 | tuner |" in table and "| 1.00 |" in table


def test_flops_per_token_matches_the_issue_definition(bench):
    dims = bench.shape_dims("llama3-8b")
    n = bench.linear_params(dims)
    # 32 x (q,o 4096x4096; k,v 4096x1024; 3 MLP 4096x14336) + LM head 4096 x 128256
    assert n == 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 4096 * 128256
    seq = 4096
    causal = 6 * 32 * 4096 * (seq + 1)  # 3 x (2 products x 2 FLOPs) x layers x d x S(S+1)/2 / S
    assert bench.flops_per_token(dims, [seq]) == pytest.approx(4 * n + causal)
    # NeMo's quoted 12,473 tok/s on an H100 is ~41% of its 989 TFLOP/s datasheet peak by this count
    assert 12473 * bench.flops_per_token(dims, [seq]) / 989e12 == pytest.approx(0.42, abs=0.01)
    # packing: attention shrinks with the sample length, the 4N part does not
    packed = bench.flops_per_token(dims, [512] * 8)
    assert 4 * n < packed < bench.flops_per_token(dims, [seq])


def test_append_rows_keeps_earlier_rows(bench, tmp_path):
    path = tmp_path / "r.json"
    bench.append_rows(path, [{"a": 1}])
    bench.append_rows(path, [{"a": 2}, {"a": 3}])
    assert json.loads(path.read_text()) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.lock"]


def test_specs_and_names(bench):
    opts = bench.parse_args(["--all", "--sample-len", "512"])
    specs = bench.specs_from(opts)
    assert len(specs) == 3 * 2 * 3 * 2
    assert {s.sample_len for s in specs if s.tool == "plain"} == {None}
    assert specs[0].label == "llama2-7b-qlora-512-pack512-tuner"
    assert bench.slug("NVIDIA H200") == "h200"
    with pytest.raises(SystemExit):
        bench.parse_args(["--shape", "llama9"])


def test_idle_gaps_names_the_waits_and_the_host_work_inside_them(bench):
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
    text = bench.idle_gaps(events, steps=1)
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

    sys.path.insert(0, str(REPO / "bench"))
    from sync_trace import SyncTracer

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
    assert site.startswith("tests/test_bench.py:") and " read_back_loss < " in site
    assert "test_sync_tracer_counts" in site
    assert other[0] == "something else"
    report = tracer.report("row", steps=2)
    assert "2.0 per step" in report and "2.0/step" in report


def test_device_memory_is_sampled_only_at_the_warmup_and_window_ends(bench, monkeypatch):
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
    monkeypatch.setattr(bench, "_sync", lambda: None)
    clock = bench.StepClock(sync_steps={3, 13}, memory_steps={3, 13})
    for _ in range(13):
        clock.step_end()
    assert samples == [2, 12]  # taken before the 3rd and the 13th step end were recorded
    assert clock.device_used == 72 * 2**30 and len(clock.mem_get_info_s) == 2
