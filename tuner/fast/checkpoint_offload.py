"""Gradient checkpointing whose saved layer inputs wait in host memory.

A checkpointed decoder layer keeps only its input (tokens x hidden, 16-bit) until the backward pass
recomputes it; over 32 layers at 4096 tokens that is 1 GiB of GPU memory that does nothing for most
of the step. Here the input is copied to pinned host memory as the forward pass saves it and copied
back when the backward pass needs it, so only the layers in flight hold theirs on the GPU.

How: PyTorch's reentrant checkpoint saves exactly the layer's tensor inputs with ``save_for_backward``
(its forward runs without autograd, so nothing else is saved there); saved-tensor hooks around it move
those to the host. The copies run beside the computation on a copy stream, each layer's input fetched
back while the layer after it runs its backward (tuner.fast.host_copies): 32 MiB per layer at 4096
tokens of a 7B model, about half a millisecond each way over PCIe, that the compute stream no longer
waits for.

Measured (bench/history/benchmarks-2026-11.md, session 3, H200): Llama-2-7B QLoRA at 4096 tokens peaks at 5.90 GiB instead of
6.22 and steps no slower. The saving is less than the inputs' 1 GiB: without them the peak moves to
the end of the backward pass, where the fp32 LoRA gradients and one recomputed layer are alive.

Used by tuner.train.model for the layers it checkpoints when the config key checkpoint_layers says so (or the
run does not fit otherwise; tuner.plan.estimate.checkpoint_plan). One process only: reentrant
checkpointing does not go with DistributedDataParallel's unused-parameter search.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from tuner.fast import host_copies

# Smaller saved tensors (masks, positions, scalars) stay where they are: not worth a copy.
MIN_OFFLOAD_BYTES = 1 << 20


def _to_host(tensor: torch.Tensor):
    if tensor.device.type != "cuda" or tensor.numel() * tensor.element_size() < MIN_OFFLOAD_BYTES:
        return tensor
    return tensor.requires_grad, host_copies.send(tensor)


def _to_device(packed):
    if isinstance(packed, torch.Tensor):
        return packed
    requires_grad, sent = packed
    return host_copies.take(sent).requires_grad_(requires_grad)


def offloaded_checkpoint(function, *args, **kwargs):
    """``torch.utils.checkpoint.checkpoint`` (reentrant) with the saved inputs in host memory; the
    signature transformers' checkpointed layers call (``_gradient_checkpointing_func``)."""
    kwargs.pop("use_reentrant", None)
    with torch.autograd.graph.saved_tensors_hooks(_to_host, _to_device):
        return checkpoint(function, *args, use_reentrant=True, **kwargs)


def offload_checkpoints(layers) -> int:
    """Make these checkpointed layers (transformers' GradientCheckpointingLayer) keep their saved
    inputs in host memory. Returns how many."""
    for layer in layers:
        layer._gradient_checkpointing_func = offloaded_checkpoint
    return len(layers)
