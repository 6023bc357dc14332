"""What both kinds of layer graphs need to capture a decoder layer: the layer as a function of
positional tensors, its trainable parameters in a fixed order, fresh leaves for the capture, and the
eager warm-up before it. Used by tuner.fast.layer_graphs (layers that keep their activations) and
tuner.fast.checkpoint_graphs (layers that recompute them)."""

from __future__ import annotations

import torch
from torch import nn

WARMUP_STEPS = 3  # eager iterations before capture (Triton compiles, cuBLAS picks its kernels)


class LayerCall:
    """A decoder layer as a function of positional tensors only, the form a capture takes: the
    hidden states, the rotary tables, the sample boundaries, then the layer's trainable parameters,
    which the body does not read by name (the layer reads its own) but which make their gradients
    graph outputs."""

    def __init__(self, forward, row_length: int, constants: tuple):
        self._layer_forward = forward
        self.row_length = row_length
        self.constants = dict(constants)

    def __call__(self, hidden, cos, sin, cu, *params):
        return self._layer_forward(
            hidden,
            position_embeddings=(cos, sin),
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=self.row_length,  # an upper bound of the longest sample: fixed per graph
            max_length_k=self.row_length,
            **self.constants,
        )


def trainable_slots(layer: nn.Module) -> list:
    """(module, name) of each trainable parameter of ``layer``, in a fixed order."""
    return [
        (module, name)
        for module in layer.modules()
        for name, param in module._parameters.items()
        if param is not None and param.requires_grad
    ]


def swap_in_aliases(slots: list) -> list:
    """Replace each parameter in ``slots`` by a new leaf sharing its memory; returns the originals.

    Why: the backward of a parameter first used on the default stream (by an earlier eager step
    whose autograd nodes something still holds) makes that stream wait on the capturing stream,
    which ends the capture ("operation would make the legacy stream depend on a capturing blocking
    stream"). A fresh leaf has no history; sharing memory, the captured kernels read the real
    weights, which the optimizer updates in place."""
    originals = []
    for module, name in slots:
        param = module._parameters[name]
        originals.append(param)
        module._parameters[name] = nn.Parameter(param.detach(), requires_grad=True)
    return originals


def restore_params(slots: list, originals: list) -> None:
    for (module, name), param in zip(slots, originals, strict=True):
        module._parameters[name] = param


def warm_up(calls, inputs, shared, slots, *, without_grad: bool = False) -> None:
    """WARMUP_STEPS eager forward + backward passes of every layer on a side stream, as
    make_graphed_callables' own warm-up does (Triton compiles, cuBLAS picks its kernels, lazy
    initialisation happens outside the capture), with the leaves the caller swapped in.
    ``without_grad``: each pass also runs the forward without autograd first, as a checkpointed
    layer's forward pass does."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            for call, first, layer_slots in zip(calls, inputs, slots, strict=True):
                leaves = [m._parameters[n] for m, n in layer_slots]
                if without_grad:
                    with torch.no_grad():
                        call(first, *shared, *leaves)
                out = call(first, *shared, *leaves)
                wanted = [t for t in (first, *leaves) if t.requires_grad]
                torch.autograd.grad(out, wanted, torch.empty_like(out), allow_unused=True)
                del out
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
