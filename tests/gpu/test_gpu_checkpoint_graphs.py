"""Checkpointed decoder layers replayed as CUDA graphs (tuner.fast.checkpoint_graphs through
tuner.fast.layer_graphs) on the device: with LoRA dropout on, a graphed step gives eager
checkpointing's loss and LoRA gradients for the same seed (so the recomputation drew the forward
pass's masks), with the inputs kept on the GPU or in host memory and with some layers checkpointed
and others not; and a training run replays them with its loss going down."""

from __future__ import annotations

import logging

import pytest

from tests.gpu.common import GraphedAgainstEager, gpu_config, packed_cuda_batch, write_gpu_data

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("mode", ["all", "offload", "mixed"])
def test_graphed_checkpointed_layers_equal_eager_checkpointing(workspace, small_llama_dir, monkeypatch, mode):

    from tuner.fast.layer_graphs import graph_layers
    from tuner.models.layers import decoder_layers
    from tuner.models.load import release
    from tuner.train.model import build_model

    monkeypatch.setenv("TUNER_CUDA_GRAPHS", "on")
    config = gpu_config(
        small_llama_dir,
        write_gpu_data(workspace),
        method="qlora",
        quantization="4bit",
        checkpoint_layers="offload" if mode == "offload" else "all",
        lora_dropout=0.1,
    )
    model, built = build_model(config)
    graphs = built.layer_graphs
    assert built.plan.checkpoint_graphs, built.plan.describe()
    assert graphs is not None and sum(graphs.checkpointed) == 4, built.describe()
    if mode == "mixed":  # the last two layers keep their activations: make_graphed_callables' graphs
        graphs.remove()
        for layer in decoder_layers(model)[2:]:
            layer.gradient_checkpointing = False
        graphs = graph_layers(model, built.attention, max_checkpointed_tokens=8192)
        assert graphs.checkpointed == [True, True, False, False]
    steps = GraphedAgainstEager(model, graphs, label=f"{mode}, ")
    vocab = model.config.vocab_size
    try:
        three = packed_cuda_batch([300, 500, 224], vocab)
        steps.step(three, paused=False)  # first sight of the shape: eager
        assert graphs.graphed is None
        steps.check(three, "3 samples, captured")
        assert graphs.checkpoint_graphs is not None, graphs.failed or graphs.skipped
        assert graphs.replays == 1
        steps.check(packed_cuda_batch([100, 200, 300, 424], vocab), "4 samples, same graph")
        steps.move_weights()
        steps.check(three, "after a weight update")
        assert graphs.replays == 3
        # the masks are drawn, not fixed at capture: another seed, another loss
        assert steps.step(three, paused=False, seed=1)[0] != steps.step(three, paused=False, seed=0)[0]
    finally:
        graphs.remove()
        release(model, built)


def test_training_with_checkpointed_graphs_replays_and_lowers_the_loss(
    workspace, small_llama_dir, monkeypatch, caplog
):
    from tuner.runs.events import read_events
    from tuner.train.run import train

    monkeypatch.setenv("TUNER_CUDA_GRAPHS", "on")
    config = gpu_config(
        small_llama_dir,
        write_gpu_data(workspace),
        name="checkpoint-graphs",
        method="qlora",
        quantization="4bit",
        checkpoint_layers="offload",
        pack_to_max_length=True,
        tokens_per_step=256,
        lora_dropout=0.1,
    )
    with caplog.at_level(logging.INFO, logger="tuner.fast.layer_graphs"):
        result = train(config)
    losses = [e["loss"] for e in read_events(result.run_dir) if e["type"] == "log" and "loss" in e]
    print(f"checkpointed graphs: first {losses[0]:.3f} last {losses[-1]:.3f};", caplog.text.strip()[-300:])
    assert result.status == "completed"
    captured = [line for line in caplog.text.splitlines() if "captured CUDA graphs of 4 layers" in line]
    assert captured and captured[0].endswith("(4 of them checkpointed)"), caplog.text[-2000:]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5
