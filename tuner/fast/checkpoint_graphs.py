"""Checkpointed decoder layers replayed as CUDA graphs: the small card's path without the host's wait.

Why: on an 8-16 GB card most layers are checkpointed, so each runs three times per step (forward,
recomputation, backward) and the host issues its kernels three times: 5 to 60 us of Python,
autograd and dispatch each, for kernels that take about as long on a fast GPU. Eagerly, a
Llama-2-7B QLoRA step at 4096 tokens with every layer checkpointed takes 0.60 s where its kernels
need about 0.41 (bench/results/2026-12-04-h200-budgets-llama2.json against the kernel times of
bench/results/profiles/). tuner.fast.layer_graphs cannot take these layers: its graphs keep each
layer's activations between forward and backward, which is what checkpointing gives up.

How: per checkpointed layer, two graphs that keep nothing between them but the layer's input, which is
the checkpoint itself:
- the forward graph runs the layer without autograd, reading a static input buffer and writing a static
  output buffer; its output is copied out, the input kept (on the GPU, or in pinned host memory when
  the plan offloads checkpoints);
- the backward graph runs the layer again with autograd (the recomputation) and then its backward,
  reading the kept input and the output's gradient from static buffers and writing the input's
  gradient and the trainable parameters' gradients to static buffers.
Every checkpointed layer's graphs share one memory pool and the same static buffers (the parameter
gradients' by shape: Llama's layers all have the same), so the graphs cost one layer's working memory
(which the eager recomputation needs anyway) and a few row-sized buffers. The gradients are copied out
and handed to autograd like any other.

Dropout: the recomputation must draw the masks the forward pass drew. A captured graph draws from the
CUDA generator's Philox stream at the offset the generator has when the graph is replayed, and the
backward graph draws the same calls in the same order as the forward graph before its backward part
(which draws nothing). So the offset at the forward replay is kept and set again for the backward
replay, then put back: two host calls, no GPU work, no later randomness shifted. (Dropout
regeneration of tuner.fast.lora_fused swaps generator states inside the layer, host work a replay
would not repeat: it stays off for layers graphed here. Seeded dropout, tuner.fast.seeded_dropout, draws
its seeds from the same generator inside the graphs, so the offset set again covers it too, and it keeps
no masks: the plan uses it wherever every layer is graphed.)

What can be graphed is LayerGraphs' to decide (tuner.fast.layer_graphs: the step's shape, the
arguments, the longest row the plan allows: tuner.plan.memory.CHECKPOINT_GRAPH_MAX_TOKENS); this module
captures and replays.
"""

from __future__ import annotations

import torch

from tuner.fast import host_copies
from tuner.fast.graph_capture import LayerCall


class CheckpointGraphs:
    """The graphs of the checkpointed layers ``calls`` (tuner.fast.graph_capture.LayerCall, one per
    layer, in forward order). ``slots``: each layer's trainable (module, name) slots;
    ``input_needs_grad``: per layer, whether its input needs a gradient (the first layer's may not);
    ``offload``: the kept inputs wait in pinned host memory."""

    def __init__(self, calls: list[LayerCall], slots: list, input_needs_grad: list[bool], offload: bool):
        self.calls, self.slots = list(calls), list(slots)
        self.input_needs_grad = list(input_needs_grad)
        self.offload = offload
        self.forward_graphs: list = []
        self.backward_graphs: list = []
        self.param_grads: list = []  # per layer, its parameters' gradient buffers (shared by shape)
        self.shared: tuple = ()  # static rotary tables and sample boundaries
        self.hidden_in = self.result = self.grad_out = None
        self.generator = None
        self._pass = None  # the rotary table of the forward pass the shared buffers hold

    def capture(self, hidden: torch.Tensor, cos, sin, cu) -> None:
        """Capture every layer's two graphs for rows like ``hidden``. Call with the layers' trainable
        parameters swapped for fresh leaves (tuner.fast.graph_capture.swap_in_aliases), under the
        autocast state of the training step, after warming the layers up."""
        device = hidden.device
        self.generator = torch.cuda.default_generators[device.index or torch.cuda.current_device()]
        self.shared = (cos.detach().clone(), sin.detach().clone(), cu.clone())
        self.hidden_in = torch.empty_like(hidden, requires_grad=False)
        self.result = torch.empty_like(self.hidden_in)  # the output, then the input's gradient
        self.grad_out = torch.zeros_like(self.hidden_in)
        by_shape: dict = {}
        pool = torch.cuda.graph_pool_handle()
        for call, layer_slots, needs_grad in zip(self.calls, self.slots, self.input_needs_grad, strict=True):
            leaves = [module._parameters[name] for module, name in layer_slots]
            signature = tuple((tuple(p.shape), p.dtype) for p in leaves)
            if signature not in by_shape:
                by_shape[signature] = [torch.empty_like(p, requires_grad=False) for p in leaves]
            grads = by_shape[signature]
            forward = torch.cuda.CUDAGraph()
            with torch.cuda.graph(forward, pool=pool), torch.no_grad():
                out = call(self.hidden_in, *self.shared, *leaves)
                if out.shape != self.hidden_in.shape or out.dtype != self.hidden_in.dtype:
                    raise ValueError(f"layer output {tuple(out.shape)} {out.dtype} is not like its input")
                self.result.copy_(out)
                del out
            backward = torch.cuda.CUDAGraph()
            with torch.cuda.graph(backward, pool=pool):
                x = self.hidden_in.detach().requires_grad_(needs_grad)
                out = call(x, *self.shared, *leaves)
                wanted = ([x] if needs_grad else []) + leaves
                found = torch.autograd.grad(out, wanted, self.grad_out, allow_unused=True)
                if needs_grad:
                    self.result.copy_(found[0])
                for buffer, grad in zip(grads, found[int(needs_grad) :], strict=True):
                    if grad is None:
                        buffer.zero_()
                    else:
                        buffer.copy_(grad)
                del x, out, found
            self.forward_graphs.append(forward)
            self.backward_graphs.append(backward)
            self.param_grads.append(grads)

    def run(self, position: int, hidden, cos, sin, cu, params: list):
        """The layer at ``position`` on ``hidden`` (with autograd: its backward replays the backward
        graph). ``params``: its trainable parameters, whose gradients autograd accumulates."""
        if self._pass is not cos:  # once per forward pass: every layer gets the same tables
            for static, value in zip(self.shared, (cos, sin, cu), strict=True):
                static.copy_(value)
            self._pass = cos
        return _Replay.apply(self, position, hidden, *params)


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, graphs: CheckpointGraphs, position: int, hidden, *params):
        ctx.graphs, ctx.position = graphs, position
        ctx.offset = graphs.generator.get_offset()
        graphs.hidden_in.copy_(hidden)
        graphs.forward_graphs[position].replay()
        if graphs.offload:  # copied beside the replays (tuner.fast.host_copies)
            ctx.sent = host_copies.send(hidden)
        else:
            ctx.save_for_backward(hidden)
        return graphs.result.clone()

    @staticmethod
    def backward(ctx, grad):
        graphs, position = ctx.graphs, ctx.position
        if graphs.offload:
            graphs.hidden_in.copy_(host_copies.take(ctx.sent))
            ctx.sent = None
        else:
            (hidden,) = ctx.saved_tensors
            graphs.hidden_in.copy_(hidden)
        graphs.grad_out.copy_(grad)
        entry = graphs.generator.get_offset()
        graphs.generator.set_offset(ctx.offset)  # the forward replay's dropout masks again
        try:
            graphs.backward_graphs[position].replay()
        finally:
            graphs.generator.set_offset(entry)
        grad_hidden = graphs.result.clone() if graphs.input_needs_grad[position] else None
        return (None, None, grad_hidden, *[buffer.clone() for buffer in graphs.param_grads[position]])
