"""Checkpointed layer inputs in host memory (tuner.fast.checkpoint_offload) on CUDA: the gradients of plain
checkpointing, with the inputs of all but the layers in flight gone from the GPU's peak."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def _step(offload: bool, ids):
    import functools

    import torch
    from torch.utils.checkpoint import checkpoint

    from tests.tiny import SMALL_GPU_SIZES, build_model, build_tokenizer
    from tuner.fast.checkpoint_offload import offload_checkpoints
    from tuner.fast.lora_fused import fuse_lora
    from tuner.models.load import add_lora

    sizes = dict(SMALL_GPU_SIZES, num_hidden_layers=8, max_position_embeddings=8192)
    model = build_model("llama", build_tokenizer(), **sizes).to("cuda", torch.bfloat16)
    model = add_lora(model, r=16, dropout=0.1, gradient_checkpointing=True)
    fuse_lora(model)
    layers = list(model.base_model.model.model.layers)
    if offload:
        assert offload_checkpoints(layers) == 8
    else:  # the checkpoint offloading wraps (reentrant), without its hooks: only the hooks differ
        for layer in layers:
            layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=True)
    model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    torch.manual_seed(3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}
    del model
    torch.cuda.empty_cache()
    return loss.item(), grads, peak


def test_offloaded_inputs_leave_the_gpu_and_keep_the_gradients():
    import torch

    ids = torch.randint(0, 500, (1, 8192), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    loss, grads, peak = _step(False, ids)
    off_loss, off_grads, off_peak = _step(True, ids)
    one_input = 8192 * 1024 * 2  # one layer's bf16 input
    print(f"peak above weights: checkpointed {peak / 2**20:.1f} MiB, offloaded {off_peak / 2**20:.1f} MiB")
    assert off_loss == pytest.approx(loss, rel=1e-3)
    for name, grad in grads.items():
        # flash attention's backward accumulates in a nondeterministic order: compare whole tensors
        # (elements of bf16 runs differ by ~0.5%, the 2026-12-01 H200 run)
        error = (off_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert error < 2e-2, (name, error.item())
    # 8 inputs checkpointed; offloaded, at most the ones in flight stay (2 in the estimate)
    assert peak - off_peak >= 5 * one_input, (peak, off_peak)
