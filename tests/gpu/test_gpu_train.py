"""GPU paths of training (run on the device): QLoRA / 8-bit LoRA steps, attention choice, DeepSpeed.

A 4-layer model of Llama shape (hidden 1024) with random weights is big enough for bitsandbytes'
kernels and small enough to train in seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]

from tests.gpu.common import gpu_config, write_gpu_data  # noqa: E402


def _losses(run_dir):
    from tuner.runs.events import read_events

    return [e["loss"] for e in read_events(run_dir) if e["type"] == "log" and "loss" in e]


@pytest.mark.parametrize("method,quantization", [("qlora", "4bit"), ("lora", "8bit"), ("lora", "none")])
def test_lora_steps_on_gpu_lower_the_loss(workspace, small_llama_dir, method, quantization):
    import torch

    from tuner.train.run import train

    torch.cuda.reset_peak_memory_stats()
    result = train(
        gpu_config(small_llama_dir, write_gpu_data(workspace), method=method, quantization=quantization)
    )
    losses = _losses(result.run_dir)
    print(
        f"{method}/{quantization}: first {losses[0]:.3f} last {losses[-1]:.3f} "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )
    assert result.status == "completed"
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_attention_choice_is_logged(small_llama_dir):
    import importlib.util

    from tuner.models.load import load_model

    loaded = load_model(str(small_llama_dir))
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert loaded.attention == expected
    assert loaded.model.config._attn_implementation == expected
    print("attention:", loaded.describe())


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_on_one_gpu(workspace, small_llama_dir, stage):
    pytest.importorskip("deepspeed")
    data = write_gpu_data(workspace)
    env = dict(
        os.environ, TUNER_WORKSPACE=str(workspace), PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}"
    )
    cmd = [
        sys.executable,
        "-m",
        "tuner",
        "train",
        str(_write_yaml(workspace, small_llama_dir, data)),
        "--deepspeed",
        stage,
        "--set",
        "max_steps=6",
    ]
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-2000:], proc.stderr[-4000:])
    assert proc.returncode == 0
    assert "run folder:" in proc.stdout.strip().splitlines()[-1]


def _write_yaml(folder, model_dir, data):
    from tuner.config.files import save_config

    path = folder / "ds.yaml"
    save_config(gpu_config(model_dir, data, name="ds_test", gradient_checkpointing=False), path, force=True)
    return path


@pytest.mark.parametrize("plan", ["auto", "all", "offload"])
def test_each_checkpointing_plan_trains_qlora_packed(workspace, small_llama_dir, monkeypatch, plan):
    # checkpoint_layers: auto (on a large GPU no layer is checkpointed), every layer, every
    # layer with its input in host memory; with fused LoRA (the default), packed rows and the packing check.
    from tuner.runs.events import read_events
    from tuner.train.run import train

    config = gpu_config(
        small_llama_dir,
        write_gpu_data(workspace),
        name=f"plan_{plan}",
        checkpoint_layers=plan,
        method="qlora",
        quantization="4bit",
        gradient_checkpointing=True,
        pack_to_max_length=True,
        tokens_per_step=256,
        lora_dropout=0.1,
    )
    result = train(config)
    losses = _losses(result.run_dir)
    messages = " ".join(e.get("message", "") for e in read_events(result.run_dir))
    expected = {"auto": "gradient checkpointing on 0 of 4 layers", "all": "on every layer (4)"}
    expected["offload"] = "on every layer (4), inputs kept in host memory"
    print(plan, f"first {losses[0]:.3f} last {losses[-1]:.3f}")
    assert result.status == "completed" and expected[plan] in messages
    assert "packed samples apart" not in messages and "fused LoRA layers" in messages
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5


def _embedding_run(model_dir: str, mode: str) -> dict:
    """One QLoRA run with every layer checkpointed and ``embedding_on_cpu=mode``, in a fresh process
    (tests.gpu.common.in_fresh_process): its training peak, losses, log and what the spy saw."""
    import torch

    from tests.gpu.common import gpu_config, write_gpu_data
    from tuner.fast.embedding_offload import HostEmbedding
    from tuner.runs.events import read_events
    from tuner.train.callbacks import EventCallback
    from tuner.train.run import train

    # The peak of training only: loading puts the whole table on the GPU before it moves.
    train_begin = EventCallback.on_train_begin

    def reset_peak(self, *args, **kwargs):
        torch.cuda.reset_peak_memory_stats()
        return train_begin(self, *args, **kwargs)

    EventCallback.on_train_begin = reset_peak
    # Every training forward gets its ids' host copy from the batch: none reads them back from the GPU
    # (a device sync per step) through the real DataLoader (pinned memory) and accelerate's device move.
    handed = []
    forward = HostEmbedding.forward

    def spy(self, input_ids):
        if torch.is_grad_enabled():  # a training step's forward (sample answers generate without grad)
            handed.append(self.next_host_ids is not None and torch.equal(self.next_host_ids, input_ids.cpu()))
        return forward(self, input_ids)

    HostEmbedding.forward = spy
    config = gpu_config(
        model_dir,
        write_gpu_data(Path.cwd()),
        name=f"emb_{mode}",
        method="qlora",
        quantization="4bit",
        checkpoint_layers="all",
        embedding_on_cpu=mode,
    )
    result = train(config)
    return {
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
        "status": result.status,
        "losses": _losses(result.run_dir),
        "messages": " ".join(e.get("message", "") for e in read_events(result.run_dir)),
        "handed": handed,
    }


def test_input_embedding_in_host_memory_trains_and_frees_its_gpu_memory(workspace, tmp_path):
    # embedding_on_cpu: on: QLoRA with every layer checkpointed trains as before, the log says
    # the table moved, and the peak is lower by about the table (vocab x hidden x 2 bytes; a 32k
    # vocabulary makes it 62.5 MiB here, well above the runs' other differences). Each run has a
    # process of its own: in one shared with earlier tests, what they left on the GPU (and frees
    # during a run) blurs the peaks.
    import torch

    from tests.gpu.common import in_fresh_process
    from tests.tiny import SMALL_GPU_SIZES, save_tiny_model

    sizes = {**SMALL_GPU_SIZES, "vocab_size": 32000}
    model_dir = save_tiny_model("llama", tmp_path / "m", torch.bfloat16, **sizes)
    runs = {mode: in_fresh_process(_embedding_run, str(model_dir), mode) for mode in ("off", "on")}
    table_mib = sizes["vocab_size"] * sizes["hidden_size"] * 2 / 2**20
    peaks = {mode: run["peak_mib"] for mode, run in runs.items()}
    print(f"peak off {peaks['off']:.1f} MiB, on {peaks['on']:.1f} MiB, table {table_mib:.1f} MiB")
    for mode, run in runs.items():
        assert run["status"] == "completed"
        assert ("input embedding in host memory" in run["messages"]) == (mode == "on"), run["messages"][:2000]
        losses = run["losses"]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5
    assert peaks["off"] - peaks["on"] > 0.8 * table_mib
    handed = runs["on"]["handed"]
    assert len(handed) >= 30 and all(handed), handed


def test_deferred_logging_copies_through_pinned_memory_and_logs_the_same_losses(
    workspace, small_llama_dir, monkeypatch
):
    # Lean steps (TUNER_LEAN_STEPS=on) on CUDA: every logged loss reaches the host by an asynchronous copy
    # into pinned memory behind a CUDA event (no device sync at the logging point), and the run
    # logs the losses that reading them back at once logs.
    from tuner.fast.deferred_log import PendingLog

    snapshots = []
    snapshot = PendingLog.snapshot.__func__

    def spy(cls, *args, **kwargs):
        pending = snapshot(cls, *args, **kwargs)
        snapshots.append(pending._copied is not None and pending.loss_sum.is_pinned())
        return pending

    monkeypatch.setattr(PendingLog, "snapshot", classmethod(spy))
    losses = {}
    for mode in ("off", "on"):
        monkeypatch.setenv("TUNER_LEAN_STEPS", mode)
        from tuner.train.run import train

        config = gpu_config(small_llama_dir, write_gpu_data(workspace), name=f"deferred_{mode}", seed=3)
        result = train(config)
        assert result.status == "completed"
        losses[mode] = _losses(result.run_dir)
    print("deferred logging: pinned copies", sum(snapshots), "losses", losses["on"][:3], "...")
    assert len(snapshots) == 30 and all(snapshots)
    assert len(losses["on"]) == len(losses["off"]) == 30
    assert losses["on"] == pytest.approx(losses["off"], rel=2e-2)  # CUDA kernels need not be bit-exact


def test_wide_loss_chunks_train_like_liger_own_chunks(workspace, small_llama_dir, monkeypatch):
    # TUNER_LIGER=wide: in a run with no layer checkpointed, Liger's fused cross-entropy gets a
    # half-GiB logits budget per chunk (its chunk_mem_const, the last argument of its autograd
    # function), and the losses are those of Liger's own chunking.
    from liger_kernel.transformers import functional

    from tuner.train.run import train

    real = functional.LigerFusedLinearCrossEntropyFunction
    budgets = []

    class Spy:
        supports_inner_impl_dispatch = getattr(real, "supports_inner_impl_dispatch", False)

        @staticmethod
        def apply(*args):
            budgets.append(args[-1] if Spy.supports_inner_impl_dispatch else 1)
            return real.apply(*args)

    monkeypatch.setattr(functional, "LigerFusedLinearCrossEntropyFunction", Spy)
    losses, seen = {}, {}  # checkpoint_layers auto: the small model fits, no layer checkpointed
    for mode in ("on", "wide"):
        monkeypatch.setenv("TUNER_LIGER", mode)
        budgets.clear()
        config = gpu_config(small_llama_dir, write_gpu_data(workspace), name=f"chunks_{mode}", seed=5)
        result = train(config)
        assert result.status == "completed"
        losses[mode], seen[mode] = _losses(result.run_dir), set(budgets)
    print("loss chunk budgets", seen, "losses wide", losses["wide"][:3], "liger's own", losses["on"][:3])
    assert seen["on"] == {1} and min(seen["wide"]) > 1
    assert losses["wide"] == pytest.approx(losses["on"], rel=2e-2)


def _capped_run(model_dir: str) -> dict:
    """A run under TUNER_GPU_MEMORY_GIB (inherited from the test), in a fresh process: its peak
    reserved bytes count this run alone."""
    import torch

    from tests.gpu.common import gpu_config, write_gpu_data
    from tuner.train.run import train

    config = gpu_config(model_dir, write_gpu_data(Path.cwd()), name="capped", gradient_checkpointing=True)
    result = train(config)
    return {
        "reserved": torch.cuda.max_memory_reserved(),
        "status": result.status,
        "run_dir": str(result.run_dir),
    }


def test_a_gpu_memory_cap_holds_the_run_and_its_plan(workspace, small_llama_dir, monkeypatch):
    # TUNER_GPU_MEMORY_GIB=2: PyTorch's allocator may reserve at most 2 GiB less the CUDA context, the
    # checkpoint plan says it planned against 2 GiB, and the run trains within it. The run has a process
    # of its own, as a capped run would: the cap is process-wide and counts what earlier tests reserved.
    from tests.gpu.common import in_fresh_process
    from tuner.runs.events import read_events

    monkeypatch.setenv("TUNER_GPU_MEMORY_GIB", "2")
    run = in_fresh_process(_capped_run, str(small_llama_dir))
    messages = " ".join(e.get("message", "") for e in read_events(run["run_dir"]))
    print("capped run: peak reserved", run["reserved"] / 2**30, "GiB")
    assert run["status"] == "completed"
    assert "fit in 2 GiB of GPU memory" in messages, messages[:2000]
    assert run["reserved"] <= 2 * 2**30
    losses = _losses(run["run_dir"])
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5


def test_fused_adamw_trains_like_paged_adamw_on_the_small_card_plan(workspace, small_llama_dir):
    # The plan gives a tight 4/8-bit run torch's fused AdamW wherever its state fits the card
    # (tuner.plan.decide.optimizer_state_overflows) instead of bitsandbytes' paged AdamW: the same 32-bit
    # AdamW, so the same seed and the small card's plan (QLoRA, every layer checkpointed, inputs
    # offloaded, dropout on) must log the same losses step by step, to bf16 rounding.
    from tuner.train.run import train

    losses = {}
    for optimizer in ("paged_adamw_32bit", "adamw_torch_fused"):
        config = gpu_config(
            small_llama_dir,
            write_gpu_data(workspace),
            name=f"opt_{optimizer}",
            method="qlora",
            quantization="4bit",
            checkpoint_layers="offload",
            lora_dropout=0.1,
            optimizer=optimizer,
            seed=7,
        )
        result = train(config)
        assert result.status == "completed"
        losses[optimizer] = _losses(result.run_dir)
    paged, fused = losses["paged_adamw_32bit"], losses["adamw_torch_fused"]
    print("paged", [round(v, 4) for v in paged[:5]], "fused", [round(v, 4) for v in fused[:5]])
    assert len(paged) == len(fused) >= 30
    assert fused[0] == pytest.approx(paged[0], rel=1e-3)  # before any update: the same model and batch
    assert fused == pytest.approx(paged, rel=0.05, abs=0.02)
    assert sum(fused[-3:]) / 3 < sum(fused[:3]) / 3 * 0.5
