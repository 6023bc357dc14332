"""Checkpointing with the saved layer inputs in host memory (tuner.fast.checkpoint_offload): the gradients
are those of the model without checkpointing, LoRA dropout included; the host copies themselves need
CUDA and are checked in tests/gpu/test_gpu_offload.py."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import build_model, build_tokenizer
from tuner.fast.checkpoint_offload import _to_device, _to_host, offload_checkpoints, offloaded_checkpoint
from tuner.models.load import add_lora


def _lora_llama(checkpointing: bool, seed: int = 0):
    model = build_model("llama", build_tokenizer(), seed=seed, num_hidden_layers=3)
    return add_lora(model, r=4, dropout=0.2, gradient_checkpointing=checkpointing)


def _lora_grads(model, ids, seed: int):
    torch.manual_seed(seed)  # the same dropout masks in both models
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("fused", [False, True], ids=["peft-lora", "fused-lora"])
def test_offloaded_checkpoint_gives_the_gradients_of_no_checkpointing(fused):
    from tuner.fast.lora_fused import fuse_lora

    offloaded, reference = _lora_llama(True), _lora_llama(False)
    reference.load_state_dict(offloaded.state_dict())
    if fused:  # as training runs them by default
        assert fuse_lora(offloaded) == fuse_lora(reference) == 3 * 7
    layers = list(offloaded.base_model.model.model.layers)
    assert offload_checkpoints(layers) == 3
    assert all(layer._gradient_checkpointing_func is offloaded_checkpoint for layer in layers)
    calls = [0]
    forward = layers[0].mlp.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    layers[0].mlp.forward = counted
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    loss, grads = _lora_grads(offloaded, ids, seed=7)
    ref_loss, ref_grads = _lora_grads(reference, ids, seed=7)
    assert calls[0] == 2  # checkpointed: the backward pass ran the layer again
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and len(grads) == 3 * 7 * 2
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=name)


def test_only_large_cuda_tensors_leave_the_device():
    # On a CPU there is nothing to offload: the hooks hand tensors back untouched.
    small, large = torch.ones(4), torch.ones(1024, 1024)
    assert _to_host(small) is small and _to_host(large) is large
    assert _to_device(large) is large
