"""tuner.fast.layer_graphs on the CPU: the bookkeeping around CUDA graphs. Capture and replay need CUDA
and are tested on the device (tests/gpu/test_gpu_layer_graphs.py)."""

from __future__ import annotations

import torch

from tuner.fast.layer_graphs import LayerGraphs, graph_layers, pad_boundaries, padded_sample_count
from tuner.models.layers import decoder_layers


def _model(tiny_tokenizer):
    from tests.tiny import build_model

    model = build_model("llama", tiny_tokenizer, num_hidden_layers=3)
    model.train()
    return model


def test_padded_sample_counts_are_powers_of_two():
    assert [padded_sample_count(n) for n in (1, 2, 3, 4, 5, 8, 9, 33)] == [1, 2, 4, 4, 8, 8, 16, 64]


def test_boundaries_are_padded_with_empty_samples():
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    assert pad_boundaries(cu, 4).tolist() == [0, 3, 5, 5, 5]
    assert pad_boundaries(cu, 2) is cu


def test_installed_on_cpu_the_layers_compute_as_before_and_nothing_is_captured(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    ids = torch.randint(3, 500, (1, 24))
    expected = model(input_ids=ids, labels=ids).loss
    expected.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    graphs = LayerGraphs(decoder_layers(model))
    assert graphs.install() == 3
    for _ in range(3):  # a repeated shape: on CUDA the second step would capture
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    torch.testing.assert_close(loss, expected)
    for param, grad in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(param.grad, grad)
    assert graphs.graphed is None and graphs.replays == 0 and not graphs.seen


def test_remove_gives_each_layer_its_forward_back(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    layers = decoder_layers(model)
    own = lambda hidden, **kwargs: hidden  # noqa: E731 - an instance-level forward set by someone else
    layers[1].forward = own
    graphs = LayerGraphs(layers)
    graphs.install()
    graphs.install()  # idempotent
    assert all("forward" in layer.__dict__ for layer in layers)
    graphs.remove()
    assert "forward" not in layers[0].__dict__ and "forward" not in layers[2].__dict__
    assert layers[1].forward is own


def test_not_installed_without_cuda(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    assert graph_layers(model, "tuner_varlen") is None
    assert "forward" not in decoder_layers(model)[0].__dict__


def test_a_packed_training_call_is_refused_only_for_being_on_the_cpu(tiny_tokenizer):
    # Everything a training step hands the layers (boundaries from the collator, the Trainer's
    # num_items_in_batch, rotary embeddings) is understood: on CUDA this call would be graphed.
    from tuner.data.pack import PackedCollator
    from tuner.fast.attention import register

    model = _model(tiny_tokenizer)
    model.set_attn_implementation(register())
    graphs = LayerGraphs(decoder_layers(model))
    graphs.install()
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "position_ids": [0, 1, 2]}] * 2
    batch = PackedCollator(boundaries=True, pad_to=8)(rows)
    model(**batch, num_items_in_batch=torch.tensor(4), use_cache=False).loss.backward()
    assert graphs.skipped == "hidden states of shape (1, 8, 64) on cpu"


def test_flags_become_part_of_the_key_and_unknown_tensors_stop_the_graph(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    graphs = LayerGraphs(decoder_layers(model))
    graphs.install()
    ids = torch.randint(3, 500, (1, 8))
    model(input_ids=ids, labels=ids, output_hidden_states=False, use_cache=False).loss.backward()
    assert graphs.skipped.startswith("hidden states of shape")  # the flag itself was accepted
    layer = decoder_layers(model)[0]
    hidden = torch.zeros(1, 8, 64)
    cos = sin = torch.zeros(1, 8, 16)
    graphs._step_for(0, hidden, (), {"position_embeddings": (cos, sin), "extra": torch.ones(1)})
    assert graphs.skipped == "argument extra of type Tensor"
    graphs._step_for(0, hidden, (), {"position_embeddings": (cos, sin), "attention_mask": torch.ones(1, 8)})
    assert graphs.skipped == "attention_mask is set"
    assert layer.training


def test_a_layer_called_with_its_hidden_states_by_keyword_runs_as_usual(tiny_tokenizer):
    model = _model(tiny_tokenizer)
    layer = decoder_layers(model)[0]
    hidden = torch.randn(1, 6, 64)
    cos, sin = model.model.rotary_emb(hidden, torch.arange(6)[None])
    expected = layer(hidden, position_embeddings=(cos, sin))
    LayerGraphs([layer]).install()
    torch.testing.assert_close(layer(hidden_states=hidden, position_embeddings=(cos, sin)), expected)


def test_checkpointed_layers_keep_their_checkpointing_when_running_eagerly(tiny_tokenizer):
    # Installed, a checkpointed layer's flag is off (its graphs do the checkpointing); every call that
    # is not replayed still recomputes through the layer's own checkpoint function.
    model = _model(tiny_tokenizer)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(model)
    layers[2].gradient_checkpointing = False  # a mixed plan: the last layer keeps its activations
    ids = torch.randint(3, 500, (1, 24))
    expected = model(input_ids=ids, labels=ids).loss
    expected.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    calls = []
    for layer in layers:
        own = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _own=own, **k: calls.append(1) or _own(*a, **k)
    graphs = LayerGraphs(layers, max_checkpointed_tokens=8192)
    graphs.install()
    assert graphs.checkpointed == [True, True, False]
    assert not any(layer.gradient_checkpointing for layer in layers)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert len(calls) == 2  # the two checkpointed layers, once each
    torch.testing.assert_close(loss, expected)
    for param, grad in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(param.grad, grad)
    assert "(2 of them checkpointed)" in graphs.describe()
    graphs.remove()
    assert [layer.gradient_checkpointing for layer in layers] == [True, True, False]
