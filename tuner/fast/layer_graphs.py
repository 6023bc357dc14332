"""Decoder layers replayed as CUDA graphs during training, so the GPU stops waiting on Python.

Why: a QLoRA step on a 4096-token row launches some 10,000 kernels, each costing the host 5 to 60 us
of Python, autograd and dispatch (bitsandbytes' dequantize, peft, Liger's Triton launchers). On an
H100/H200 those kernels take ~0.3 s while the host needs ~0.45 s to issue them, so the GPU idles a
third of the step (bench/results/profiles/). A CUDA graph records a layer's kernels once and
replays them with one call: ``torch.cuda.make_graphed_callables`` does this for the forward and the
backward of every layer, with parameters as inputs (their gradients come out as usual) and dropout
drawing fresh random numbers on each replay.

A graph replays fixed shapes and fixed kernel arguments, so:
- only the layers that keep their activations (no gradient checkpointing) are graphed, and only on
  one CUDA process without DeepSpeed;
- a step is graphed when its row has the shape of the step the graphs were captured for (one
  shape per run, captured the second time it is seen, so a one-off shape costs nothing); other
  steps, evaluation and generation run the layers as usual;
- packed rows pass their sample boundaries (``cu_seq_lens_q``) as a graph input padded to a power
  of two with empty samples, and the longest sample as the row length (an upper bound the varlen
  kernel accepts), so rows holding different numbers of samples replay the same graph;
- the layer must take no padding mask and no KV cache; other keyword arguments that are not tensors
  (flags such as ``output_hidden_states``) are replayed as captured and are part of the shape key,
  and a tensor argument tuner does not know means the layer runs as usual.

- position ids reach a graphed layer only through the rotary tables and the sample boundaries, as in
  transformers' own decoder layers (rotary embeddings computed once per forward pass by the model).

Memory: a graph keeps its activations in a private pool for the next replay, about one eager
step's activations, which is why this is only for layers that keep theirs anyway; its static input,
output and gradient buffers add about 1.2 GiB on a 7B QLoRA run at 4096 tokens (H200 rows of
bench/history/benchmarks-2026-11.md, session 4).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from tuner.fast.attention import NAME as VARLEN
from tuner.models.layers import decoder_layers

log = logging.getLogger(__name__)

# Keyword arguments of a decoder layer's forward that a graphed call reproduces (the boundaries and
# rotary embeddings become graph inputs) or that must be empty / off for the call to be graphed.
_INPUTS = {
    "position_embeddings",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "position_ids",
}
_MUST_BE_EMPTY = {"attention_mask", "past_key_values", "cache", "use_cache", "output_attentions"}
# Passed along by transformers but unused by a layer without a KV cache (the cache positions; the
# loss normaliser the Trainer hands the model).
_IGNORED = {"cache_position", "num_items_in_batch"}
WARMUP_STEPS = 3  # eager iterations before capture (Triton compiles, cuBLAS picks its kernels)


def padded_sample_count(samples: int) -> int:
    """The number of samples a graph is captured for: the next power of two, so that rows with 5 to
    8 samples share one graph.

    >>> [padded_sample_count(n) for n in (1, 2, 3, 5, 8, 9)]
    [1, 2, 4, 8, 8, 16]
    """
    return 1 << max(samples - 1, 0).bit_length()


def pad_boundaries(cu: torch.Tensor, samples: int) -> torch.Tensor:
    """``cu`` (int32 cumulative sample lengths, samples + 1 entries) padded with empty samples at
    the end to ``samples`` samples: the varlen kernel skips a sample of length 0.

    >>> pad_boundaries(torch.tensor([0, 3, 5]), 4).tolist()
    [0, 3, 5, 5, 5]
    """
    missing = samples + 1 - cu.numel()
    return cu if missing <= 0 else torch.cat([cu, cu[-1:].expand(missing)])


class _LayerCall:
    """A decoder layer as a function of positional tensors only, the form make_graphed_callables
    takes: the hidden states, the rotary tables, the sample boundaries, then the layer's trainable
    parameters, which the body does not read by name (the layer reads its own) but which make their
    gradients graph outputs."""

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


def _trainable(layer: nn.Module) -> list:
    """(module, name) of each trainable parameter of ``layer``, in a fixed order."""
    return [
        (module, name)
        for module in layer.modules()
        for name, param in module._parameters.items()
        if param is not None and param.requires_grad
    ]


def _swap_in_aliases(slots: list) -> list:
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


def _restore(slots: list, originals: list) -> None:
    for (module, name), param in zip(slots, originals, strict=True):
        module._parameters[name] = param


class LayerGraphs:
    """Replays ``layers`` (run in this order each forward pass) as CUDA graphs when a training step
    allows it (see the module docstring). ``install`` patches their forward; ``remove`` undoes it."""

    def __init__(self, layers: list):
        self.layers = list(layers)
        self.eager: list = []  # each layer's forward before install
        self._own: list = []  # each layer's instance-level forward before install (None: its class's)
        self.graphed: list | None = None  # the graphed callables, one per layer, once captured
        self.params: list = []  # each layer's trainable parameters, graph inputs after the tensors
        self.key = None  # the step shape they were captured for
        self.seen: set = set()
        self.failed: str | None = None  # why capture failed; then every step runs eagerly
        self.paused = False  # True: every call runs eagerly (the graphs are kept)
        self.replays = 0  # forward passes that replayed the last layer's graph
        self.skipped: str | None = None  # why the last training call that could not replay did not
        self._step = None  # (cos tensor of the current forward pass, key, padded boundaries)

    def install(self) -> int:
        if self.eager:
            return len(self.layers)
        for index, layer in enumerate(self.layers):
            self.eager.append(layer.forward)
            self._own.append(layer.__dict__.get("forward"))
            layer.forward = _Patched(self, index)
        return len(self.layers)

    def remove(self) -> None:
        for layer, own in zip(self.layers, self._own, strict=True):
            if own is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = own
        self.eager, self._own, self.graphed = [], [], None

    def describe(self) -> str:
        if self.failed:
            return f"CUDA graphs off ({self.failed})"
        if self.graphed is None:
            return f"CUDA graphs for {len(self.layers)} layers, captured when a row shape repeats"
        return f"CUDA graphs for {len(self.layers)} layers, rows of {self.key[0][1]} tokens"

    # -- one call -------------------------------------------------------------------------------
    def forward(self, index: int, hidden, *args, **kwargs):
        eager = self.eager[index]
        step = None if self.failed or self.paused else self._step_for(index, hidden, args, kwargs)
        if step is None:
            return eager(hidden, *args, **kwargs)
        key, cu = step
        cos, sin = kwargs["position_embeddings"]
        if self.graphed is None and index == 0 and key in self.seen:
            self._capture(key, hidden, cos, sin, cu)
        self.seen.add(key)
        if self.graphed is None or key != self.key:
            return eager(hidden, *args, **kwargs)
        if index == len(self.layers) - 1:
            self.replays += 1
        return self.graphed[index](hidden, cos, sin, cu, *self.params[index])

    def _step_for(self, index, hidden, args, kwargs):
        """(key, padded boundaries) when this call can replay a graph, else None. Worked out once
        per forward pass (at the first layer) and reused by the others."""
        layer = self.layers[index]
        if args or not layer.training or not torch.is_grad_enabled() or layer.gradient_checkpointing:
            return None  # evaluation, generation, checkpointing: not a graphed training step
        embeddings = kwargs.get("position_embeddings")
        if not isinstance(embeddings, tuple) or len(embeddings) != 2:
            return self._skip("no rotary position_embeddings argument")
        constants = []
        for name, value in kwargs.items():
            if name in _MUST_BE_EMPTY:
                if value is not None and value is not False:
                    return self._skip(f"{name} is set")
            elif name in _INPUTS or name in _IGNORED:
                continue
            elif isinstance(value, (bool, int, float, str, type(None))):
                constants.append((name, value))
            else:
                return self._skip(f"argument {name} of type {type(value).__name__}")
        constants = tuple(sorted(constants))
        if index > 0:
            step = self._step
            if step is None or step[0] is not embeddings[0] or step[1][-1] != constants:
                return None
            return step[1:]
        self._step = None
        if not hidden.is_cuda or hidden.dim() != 3 or hidden.shape[0] != 1:
            return self._skip(f"hidden states of shape {tuple(hidden.shape)} on {hidden.device}")
        cu = _boundaries(hidden, kwargs)
        samples = padded_sample_count(cu.numel() - 1)
        key = (
            tuple(hidden.shape),
            hidden.dtype,
            hidden.requires_grad,
            samples,
            embeddings[0].dtype,
            constants,
        )
        self._step = (embeddings[0], key, pad_boundaries(cu, samples))
        return self._step[1:]

    def _skip(self, reason: str) -> None:
        self.skipped = reason
        return None

    def _capture(self, key, hidden, cos, sin, cu) -> None:
        calls = tuple(_LayerCall(eager, hidden.shape[1], key[-1]) for eager in self.eager)
        slots = [_trainable(layer) for layer in self.layers]
        params = [[module._parameters[name] for module, name in layer_slots] for layer_slots in slots]
        # Each layer its own input buffer (a layer's backward reads its saved input); the first
        # layer's input requires grad only if the embeddings' output does, the others' always do.
        shared = (cos.detach().clone(), sin.detach().clone(), cu.clone())
        inputs = [
            hidden.detach().clone().requires_grad_(hidden.requires_grad or i > 0) for i in range(len(calls))
        ]
        device = hidden.device.type
        # The previous eager step's activations sit in the caching allocator, which a graph's
        # private pool cannot reuse: hand them back first.
        torch.cuda.empty_cache()
        # A capture that fails after registering the CUDA generator leaves that generator's state
        # marked as capturing, and every later dropout raises ("Offset increment outside graph
        # capture"): keep a copy to put back if it fails.
        generator = torch.cuda.default_generators[hidden.device.index or torch.cuda.current_device()]
        generator_backup = generator.clone_state()
        swapped = []
        try:
            # make_graphed_callables refuses autocast's weight-cast cache (a cached cast would be
            # read from outside the graph); the graphs compute the same dtypes without it.
            with torch.autocast(
                device,
                dtype=torch.get_autocast_dtype(device),
                enabled=torch.is_autocast_enabled(device),
                cache_enabled=False,
            ):
                for layer_slots in slots:  # warm-up leaves, dropped before capture (see _swap_in_aliases)
                    swapped.append(_swap_in_aliases(layer_slots))
                _warm_up(calls, inputs, shared, slots)
                for layer_slots, originals in zip(slots, swapped, strict=True):
                    _restore(layer_slots, originals)
                swapped = [_swap_in_aliases(layer_slots) for layer_slots in slots]
                inputs = [t.detach().requires_grad_(t.requires_grad) for t in inputs]  # fresh leaves too
                args = tuple(
                    (inputs[i], *shared, *[m._parameters[n] for m, n in slots[i]]) for i in range(len(calls))
                )
                graphed = torch.cuda.make_graphed_callables(
                    calls, args, num_warmup_iters=0, allow_unused_input=True
                )
        except Exception as exc:  # noqa: BLE001 - any capture failure means eager layers, logged
            self.failed = f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log.warning("%s; the layers run without CUDA graphs", self.failed, exc_info=True)
            generator.graphsafe_set_state(generator_backup)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            return
        finally:
            for layer_slots, originals in zip(slots, swapped, strict=False):
                _restore(layer_slots, originals)
        self.graphed, self.key, self.params = list(graphed), key, params
        log.info("captured CUDA graphs of %d layers for rows of %d tokens", len(calls), hidden.shape[1])


def _warm_up(calls, inputs, shared, slots) -> None:
    """WARMUP_STEPS eager forward + backward passes of every layer on a side stream, as
    make_graphed_callables' own warm-up does (Triton compiles, cuBLAS picks its kernels, lazy
    initialisation happens outside the capture), but with leaves that are dropped afterwards."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            for call, first, layer_slots in zip(calls, inputs, slots, strict=True):
                leaves = [m._parameters[n] for m, n in layer_slots]
                out = call(first, *shared, *leaves)
                wanted = [t for t in (first, *leaves) if t.requires_grad]
                torch.autograd.grad(out, wanted, torch.empty_like(out), allow_unused=True)
                del out
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


class _Patched:
    """A layer's forward while graphs are installed (a class, not a closure, so repr says so)."""

    def __init__(self, graphs: LayerGraphs, index: int):
        self.graphs, self.index = graphs, index

    def __call__(self, *args, **kwargs):
        if not args:  # hidden states passed by keyword: not a call shape tuner graphs
            return self.graphs.eager[self.index](*args, **kwargs)
        return self.graphs.forward(self.index, *args, **kwargs)


def _boundaries(hidden, kwargs) -> torch.Tensor:
    """The row's cumulative sample lengths on its device: the collator's, else from the position
    ids (a host read, once per step), else one sample."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and kwargs.get("position_ids") is not None:
        from tuner.fast.attention import boundaries_from_position_ids

        cu, _ = boundaries_from_position_ids(kwargs["position_ids"])
    if cu is None:
        cu = torch.tensor([0, hidden.shape[1]], dtype=torch.int32)
    return cu.to(hidden.device, torch.int32, non_blocking=True)


def graph_layers(model, attention: str) -> LayerGraphs | None:
    """Install CUDA graphs on ``model``'s decoder layers that keep their activations, where they can
    run (CUDA, an ``attention`` that reads sample boundaries, no layer checkpointed; whether the run
    wants them, one process without DeepSpeed, is tuner.plan.decide's). Returns the manager or None."""

    if not torch.cuda.is_available():
        return None
    if attention not in (VARLEN, "flash_attention_2"):
        return None
    layers = [layer for layer in decoder_layers(model) if not layer.gradient_checkpointing]
    if not layers or len(layers) != len(decoder_layers(model)):
        # Graphs of some layers only would save part of the host time and keep a second copy of
        # their activations' memory pool next to the checkpointed layers' recomputation.
        return None
    graphs = LayerGraphs(layers)
    graphs.install()
    return graphs
