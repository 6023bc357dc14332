"""Cheap activations rebuilt in backward (tuner.fast.rebuilt_activations) on the device: a bf16 QLoRA
model with tuner's fused LoRA (and Liger's kernels where installed) keeps exactly the gated products
(and Liger's norm outputs) less after forward, with the same loss and LoRA gradients bit for bit; CUDA
graphs of the layers capture the rebuilding and give the eager step's result; and a training run whose
plan rebuilds them lowers its loss."""

from __future__ import annotations

import pytest

from tests.gpu.common import GraphedAgainstEager, gpu_config, packed_cuda_batch, small_qlora_config

pytestmark = pytest.mark.gpu

TOKENS = 4096


def _kept_after_forward(model_dir, rebuild: bool):
    """(bytes the forward leaves allocated, loss, LoRA gradients, whether Liger's norms were rebuilt)
    of one 4096-token QLoRA step through tuner's own model building, graphs off."""
    import os

    import torch

    from tuner.fast import rebuilt_activations
    from tuner.models.layers import decoder_layers
    from tuner.models.load import release
    from tuner.train.model import build_model

    os.environ["TUNER_CUDA_GRAPHS"] = "off"
    config = gpu_config(
        model_dir, "unused.jsonl", method="qlora", quantization="4bit", gradient_checkpointing=False
    )
    model, loaded = build_model(config)
    try:
        layers = decoder_layers(model)
        norms = rebuild and all(
            rebuilt_activations.keeps_its_input(layer.input_layernorm) for layer in layers
        )
        if rebuild:
            assert rebuilt_activations.rebuild_activations(layers) == len(layers)
        GraphedAgainstEager(model, graphs=None)  # LoRA B drawn, so every LoRA weight gets a gradient
        torch.manual_seed(0)
        ids = torch.randint(3, model.config.vocab_size, (1, TOKENS), device="cuda")
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        torch.cuda.synchronize()
        kept = torch.cuda.memory_allocated() - before
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return kept, loss.item(), grads, norms
    finally:
        release(model, loaded)


def test_the_forward_keeps_exactly_the_rebuilt_tensors_less_and_learns_the_same(small_llama_dir):
    from tests.tiny import SMALL_GPU_SIZES

    kept, loss, grads, _ = _kept_after_forward(small_llama_dir, rebuild=False)
    rebuilt_kept, rebuilt_loss, rebuilt_grads, norms = _kept_after_forward(small_llama_dir, rebuild=True)
    layers, hidden = SMALL_GPU_SIZES["num_hidden_layers"], SMALL_GPU_SIZES["hidden_size"]
    per_token = 2 * SMALL_GPU_SIZES["intermediate_size"] + (2 * 2 * hidden if norms else 0)
    expected = layers * TOKENS * per_token
    print(
        f"kept after forward: {kept / 2**20:.1f} MiB, rebuilt {rebuilt_kept / 2**20:.1f} MiB, "
        f"expected saving {expected / 2**20:.1f} MiB (Liger norms: {norms})"
    )
    assert kept - rebuilt_kept == pytest.approx(expected, rel=0.02)
    assert loss == rebuilt_loss
    assert all(a.equal(b) for a, b in zip(grads, rebuilt_grads, strict=True))


def test_graphed_layers_capture_the_rebuilding(workspace, small_llama_dir, monkeypatch):
    from tuner.fast.layer_graphs import graph_layers
    from tuner.fast.rebuilt_activations import rebuild_activations
    from tuner.models.layers import decoder_layers
    from tuner.models.load import release
    from tuner.train.model import build_model

    monkeypatch.setenv("TUNER_CUDA_GRAPHS", "off")  # installed below, after the rebuilding
    config = small_qlora_config(workspace, small_llama_dir, gradient_checkpointing=False, lora_dropout=0.0)
    model, loaded = build_model(config)
    graphs = None
    try:
        assert rebuild_activations(decoder_layers(model)) == 4
        graphs = graph_layers(model, loaded.attention)
        assert graphs is not None, loaded.describe()
        steps = GraphedAgainstEager(model, graphs, "rebuilt activations: ")
        batch = packed_cuda_batch([300, 500, 224], model.config.vocab_size)
        steps.step(batch, paused=False)
        steps.check(batch, "3 samples, captured")
        assert graphs.graphed is not None and graphs.replays == 1, graphs.failed or graphs.skipped
        steps.move_weights()
        steps.check(batch, "after a weight update")
    finally:
        if graphs is not None:
            graphs.remove()
        release(model, loaded)


def test_a_run_planned_to_rebuild_trains(workspace, small_llama_dir, monkeypatch):
    from tuner.runs.events import read_events
    from tuner.train.run import train

    # the small model fits anything: checkpoint half its layers so that the plan's memory is tight
    monkeypatch.setenv("TUNER_REBUILD_ACTIVATIONS", "on")
    config = small_qlora_config(workspace, small_llama_dir, name="rebuilt", lora_dropout=0.0)
    import tuner.plan.decide as decide

    planned = decide.checkpoint_plan

    def half(cfg, plan, shape, hw, budget_gib):
        return shape.layers // 2, False, planned(cfg, plan, shape, hw, budget_gib)[2], True

    monkeypatch.setattr(decide, "checkpoint_plan", half)
    result = train(config)
    events = read_events(result.run_dir)
    losses = [e["loss"] for e in events if e["type"] == "log" and "loss" in e]
    messages = " ".join(e.get("message", "") for e in events)
    print(f"rebuilt: first {losses[0]:.3f} last {losses[-1]:.3f}")
    assert result.status == "completed" and "cheap activations rebuilt in 2 kept layers" in messages
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5
