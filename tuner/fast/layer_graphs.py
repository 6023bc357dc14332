"""Decoder layers replayed as CUDA graphs during training, so the GPU stops waiting on Python.

Why: a QLoRA step on a 4096-token row launches some 10,000 kernels, each costing the host 5 to 60 us
of Python, autograd and dispatch (bitsandbytes' dequantize, peft, Liger's Triton launchers). On an
H100/H200 those kernels take ~0.3 s while the host needs ~0.45 s to issue them, so the GPU idles a
third of the step (bench/results/profiles/). A CUDA graph records a layer's kernels once and
replays them with one call: ``torch.cuda.make_graphed_callables`` does this for the forward and the
backward of every layer, with parameters as inputs (their gradients come out as usual) and dropout
drawing fresh random numbers on each replay.

A graph replays fixed shapes and fixed kernel arguments, so:
- only one CUDA process without DeepSpeed graphs its layers; the layers that keep their activations
  are graphed here, the checkpointed ones (which keep only their input) by
  tuner.fast.checkpoint_graphs, whose graphs this module captures and replays in their place;
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
step's activations, which is why make_graphed_callables is only for layers that keep theirs anyway; its static input,
output and gradient buffers add about 1.2 GiB on a 7B QLoRA run at 4096 tokens (H200 rows of
bench/history/benchmarks-2026-11.md, session 4).
"""

from __future__ import annotations

import functools
import logging

import torch

from tuner.fast.attention import NAME as VARLEN
from tuner.fast.checkpoint_graphs import CheckpointGraphs
from tuner.fast.graph_capture import LayerCall, restore_params, swap_in_aliases, trainable_slots, warm_up
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


class LayerGraphs:
    """Replays ``layers`` (run in this order each forward pass) as CUDA graphs when a training step
    allows it (see the module docstring). ``install`` patches their forward; ``remove`` undoes it.

    A layer with gradient checkpointing on when installed is graphed by
    tuner.fast.checkpoint_graphs (its checkpointing is then done here, the layer's flag is off
    until ``remove``) for rows of at most ``max_checkpointed_tokens`` tokens (longer ones recompute
    eagerly); ``offload``: those layers keep their inputs in pinned host memory."""

    def __init__(self, layers: list, offload: bool = False, max_checkpointed_tokens: int = 0):
        self.layers = list(layers)
        self.offload = offload
        self.max_checkpointed_tokens = max_checkpointed_tokens
        self.checkpointed: list[bool] = []  # per layer, whether it recomputes its activations
        self.eager: list = []  # each layer's forward before install
        self._own: list = []  # each layer's instance-level forward before install (None: its class's)
        self.graphed: list | None = None  # per layer its graphed callable (None: checkpointed), once captured
        self.checkpoint_graphs: CheckpointGraphs | None = None  # the checkpointed layers' graphs
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
            self.checkpointed.append(bool(getattr(layer, "gradient_checkpointing", False)))
            # transformers' own checkpointing would wrap the graphed call (or be skipped by the
            # patched forward, depending on its version): off, and done by _eager instead
            layer.gradient_checkpointing = False
            layer.forward = _Patched(self, index)
        return len(self.layers)

    def remove(self) -> None:
        for layer, own, checkpointed in zip(self.layers, self._own, self.checkpointed, strict=True):
            if own is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = own
            layer.gradient_checkpointing = checkpointed
        self.eager, self._own, self.checkpointed = [], [], []
        self.graphed, self.checkpoint_graphs, self.params, self._step = None, None, [], None

    def describe(self) -> str:
        if self.failed:
            return f"CUDA graphs off ({self.failed})"
        count = sum(self.checkpointed)
        checkpointed = f" ({count} of them checkpointed)" if count else ""
        if self.graphed is None:
            return (
                f"CUDA graphs for {len(self.layers)} layers{checkpointed}, captured when a row shape repeats"
            )
        if count and self.checkpoint_graphs is None:
            checkpointed = (
                f" ({count} checkpointed ones eager: rows over {self.max_checkpointed_tokens} tokens)"
            )
        return f"CUDA graphs for {len(self.layers)} layers{checkpointed}, rows of {self.key[0][1]} tokens"

    # -- one call -------------------------------------------------------------------------------
    def forward(self, index: int, hidden, *args, **kwargs):
        step = None if self.failed or self.paused else self._step_for(index, hidden, args, kwargs)
        if step is None:
            return self._eager(index, hidden, args, kwargs)
        key, cu = step
        cos, sin = kwargs["position_embeddings"]
        if self.graphed is None and index == 0 and key in self.seen:
            self._capture(key, hidden, cos, sin, cu)
        self.seen.add(key)
        if self.graphed is None or key != self.key:
            return self._eager(index, hidden, args, kwargs)
        if index == len(self.layers) - 1:
            self.replays += 1
        if self.graphed[index] is not None:
            return self.graphed[index](hidden, cos, sin, cu, *self.params[index])
        if self.checkpoint_graphs is None:
            return self._eager(index, hidden, args, kwargs)
        position = sum(self.checkpointed[:index])
        return self.checkpoint_graphs.run(position, hidden, cos, sin, cu, self.params[index])

    def _eager(self, index: int, hidden, args, kwargs):
        """The layer as it ran before install, its checkpointing included."""
        layer, eager = self.layers[index], self.eager[index]
        if self.checkpointed[index] and layer.training and torch.is_grad_enabled():
            return layer._gradient_checkpointing_func(functools.partial(eager, **kwargs), hidden, *args)
        return eager(hidden, *args, **kwargs)

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
        tokens = hidden.shape[1]
        kept = [i for i, checkpointed in enumerate(self.checkpointed) if not checkpointed]
        recomputed = [i for i, checkpointed in enumerate(self.checkpointed) if checkpointed]
        if tokens > self.max_checkpointed_tokens:
            recomputed = []
        calls = {i: LayerCall(self.eager[i], tokens, key[-1]) for i in kept + recomputed}
        slots = {i: trainable_slots(self.layers[i]) for i in range(len(self.layers))}
        params = [[module._parameters[name] for module, name in slots[i]] for i in range(len(self.layers))]
        # Each kept layer its own input buffer (a layer's backward reads its saved input); the first
        # layer's input requires grad only if the embeddings' output does, the others' always do.
        shared = (cos.detach().clone(), sin.detach().clone(), cu.clone())
        needs_grad = {i: hidden.requires_grad or i > 0 for i in calls}
        inputs = {i: hidden.detach().clone().requires_grad_(needs_grad[i]) for i in calls}
        device = hidden.device.type
        # The previous eager step's activations sit in the caching allocator, which a graph's
        # private pool cannot reuse: hand them back first.
        torch.cuda.empty_cache()
        # A capture that fails after registering the CUDA generator leaves that generator's state
        # marked as capturing, and every later dropout raises ("Offset increment outside graph
        # capture"): keep a copy to put back if it fails.
        generator = torch.cuda.default_generators[hidden.device.index or torch.cuda.current_device()]
        generator_backup = generator.clone_state()
        # The warm-up draws dropout masks: put the offset back after capture, so that the step that
        # captures draws the masks an eager step would have (and a run's randomness does not depend
        # on when the graphs were captured)
        offset = generator.get_offset()
        every = kept + recomputed
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
                # warm-up leaves, dropped before capture (see swap_in_aliases)
                swapped = [swap_in_aliases(slots[i]) for i in every]
                for group, without_grad in ((kept, False), (recomputed, True)):
                    warm_up(
                        [calls[i] for i in group],
                        [inputs[i] for i in group],
                        shared,
                        [slots[i] for i in group],
                        without_grad=without_grad,
                    )
                for i, originals in zip(every, swapped, strict=True):
                    restore_params(slots[i], originals)
                swapped = [swap_in_aliases(slots[i]) for i in every]
                graphed = [None] * len(self.layers)
                if kept:
                    fresh = [
                        inputs[i].detach().requires_grad_(needs_grad[i]) for i in kept
                    ]  # fresh leaves too
                    args = tuple(
                        (first, *shared, *[m._parameters[n] for m, n in slots[i]])
                        for first, i in zip(fresh, kept, strict=True)
                    )
                    made = torch.cuda.make_graphed_callables(
                        tuple(calls[i] for i in kept), args, num_warmup_iters=0, allow_unused_input=True
                    )
                    for i, callable_ in zip(kept, made, strict=True):
                        graphed[i] = callable_
                checkpoint_graphs = None
                if recomputed:
                    checkpoint_graphs = CheckpointGraphs(
                        [calls[i] for i in recomputed],
                        [slots[i] for i in recomputed],
                        [needs_grad[i] for i in recomputed],
                        offload=self.offload,
                    )
                    checkpoint_graphs.capture(hidden.detach(), cos, sin, cu)
        except Exception as exc:  # noqa: BLE001 - any capture failure means eager layers, logged
            self.failed = f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log.warning("%s; the layers run without CUDA graphs", self.failed, exc_info=True)
            generator.graphsafe_set_state(generator_backup)
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            return
        finally:
            for i, originals in zip(every, swapped, strict=False):
                restore_params(slots[i], originals)
        generator.set_offset(offset)
        self.graphed, self.checkpoint_graphs, self.key, self.params = graphed, checkpoint_graphs, key, params
        log.info(
            "captured CUDA graphs of %d layers for rows of %d tokens (%d of them checkpointed)",
            len(every),
            tokens,
            len(recomputed),
        )


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


def graph_layers(
    model, attention: str, offload_checkpoints: bool = False, max_checkpointed_tokens: int = 0
) -> LayerGraphs | None:
    """Install CUDA graphs on ``model``'s decoder layers where they can run (CUDA, an ``attention``
    that reads sample boundaries; whether the run wants them, one process without DeepSpeed, is
    tuner.plan.decide's): the layers that keep their activations through make_graphed_callables, the
    checkpointed ones through tuner.fast.checkpoint_graphs for rows of at most
    ``max_checkpointed_tokens`` tokens (``offload_checkpoints``: their inputs in pinned host memory).
    Returns the manager or None."""

    if not torch.cuda.is_available():
        return None
    if attention not in (VARLEN, "flash_attention_2"):
        return None
    layers = decoder_layers(model)
    if not layers or (max_checkpointed_tokens <= 0 and all(layer.gradient_checkpointing for layer in layers)):
        return None
    graphs = LayerGraphs(layers, offload=offload_checkpoints, max_checkpointed_tokens=max_checkpointed_tokens)
    graphs.install()
    return graphs
