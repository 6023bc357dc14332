"""CUDA graphs of decoder layers (tuner.fast.layer_graphs) on the device: the varlen kernel skips the
empty samples the graphs pad with, graphed QLoRA layers give the eager loss and LoRA gradients
(also for another sample count and after the weights change), and a training run replays them
with its loss going down."""

from __future__ import annotations

import logging

import pytest

from tests.gpu.common import (
    GraphedAgainstEager,
    gpu_config,
    packed_cuda_batch,
    relative_error,
    small_qlora_config,
    write_gpu_data,
)

pytestmark = pytest.mark.gpu


def test_varlen_kernel_skips_empty_samples():
    import torch

    from tuner.fast.attention import varlen_kernel
    from tuner.fast.layer_graphs import pad_boundaries

    kernel = varlen_kernel()
    if kernel is None:
        pytest.skip("this torch has no varlen attention")
    varlen_attn, causal, _ = kernel
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(1000, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )
    cu = torch.tensor([0, 300, 700, 1000], dtype=torch.int32, device="cuda")

    def run(boundaries, longest):
        out = varlen_attn(q, k, v, boundaries, boundaries, longest, longest, **causal)
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        return out, grads

    out, grads = run(cu, 400)
    padded_out, padded_grads = run(pad_boundaries(cu, 8), 1000)  # 5 empty samples, an upper bound
    errors = [relative_error(padded_out, out)] + [
        relative_error(a, b) for a, b in zip(padded_grads, grads, strict=True)
    ]
    print("varlen with empty samples: relative error of output, dq, dk, dv", [f"{e:.5f}" for e in errors])
    assert max(errors) < 1e-2


def test_graphed_qlora_layers_equal_eager(workspace, small_llama_dir, monkeypatch):

    from tuner.models.load import release
    from tuner.train.model import build_model

    monkeypatch.setenv("TUNER_CUDA_GRAPHS", "on")
    config = small_qlora_config(workspace, small_llama_dir, gradient_checkpointing=False)
    model, loaded = build_model(config)
    graphs = loaded.layer_graphs
    assert graphs is not None and len(graphs.layers) == 4, loaded.describe()
    steps = GraphedAgainstEager(model, graphs)
    vocab = model.config.vocab_size
    try:
        three = packed_cuda_batch([300, 500, 224], vocab)
        steps.step(three, paused=False)  # first sight of the shape: eager
        assert graphs.graphed is None
        steps.check(three, "3 samples, captured")
        assert graphs.graphed is not None, graphs.failed or graphs.skipped
        assert graphs.replays == 1
        steps.check(packed_cuda_batch([100, 200, 300, 424], vocab), "4 samples, same graph")
        assert graphs.replays == 2
        steps.move_weights()
        steps.check(three, "after a weight update")
        assert graphs.replays == 3
        steps.step(
            packed_cuda_batch([1000], vocab), paused=False
        )  # another row length: eager, no new capture
        assert graphs.replays == 3
    finally:
        graphs.remove()
        release(model, loaded)


def test_training_with_graphs_replays_and_lowers_the_loss(workspace, small_llama_dir, monkeypatch, caplog):
    from tuner.runs.events import read_events
    from tuner.train.run import train

    monkeypatch.setenv("TUNER_CUDA_GRAPHS", "on")
    config = gpu_config(
        small_llama_dir,
        write_gpu_data(workspace),
        name="graphs",
        method="qlora",
        quantization="4bit",
        gradient_checkpointing=False,
        pack_to_max_length=True,
        tokens_per_step=256,
        lora_dropout=0.1,
    )
    with caplog.at_level(logging.INFO, logger="tuner.fast.layer_graphs"):
        result = train(config)
        # The app trains again in the same process: the second run captures its own graphs (or
        # falls back to eager layers) and trains as well.
        again = train(config)
    assert again.status == "completed", again
    losses = [e["loss"] for e in read_events(result.run_dir) if e["type"] == "log" and "loss" in e]
    messages = " ".join(e.get("message", "") for e in read_events(result.run_dir))
    print(f"graphs: first {losses[0]:.3f} last {losses[-1]:.3f};", caplog.text.strip()[-300:])
    assert result.status == "completed" and "CUDA graphs for 4 layers" in messages
    assert "captured CUDA graphs of 4 layers" in caplog.text, caplog.text[-2000:]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5
