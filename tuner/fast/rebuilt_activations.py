"""Activations that cost one elementwise kernel to make, rebuilt in backward instead of kept.

Why: a decoder layer that keeps its activations (not checkpointed) holds, among others, three tensors
that are cheap functions of tensors it holds anyway:
- the MLP's gated product ``c = act(gate) * up``, kept by the down projection's LoRA for its gradient
  (2 bytes per token per intermediate unit: 5.4 bytes per token per hidden unit on Llama-2-7B, 7 on
  Llama-3-8B), while the product's own backward keeps ``gate`` and ``up``;
- the two RMSNorm outputs, kept by the LoRA of q, k and v, and of gate and up (2 bytes per token per
  hidden unit each), while Liger's RMSNorm keeps its input for its own backward.
That is 9.4 of the 33 bytes per token per hidden unit a Llama-2-7B layer keeps with fused LoRA
(tuner.plan.memory.activation_bytes). Where the card cannot hold every layer's activations, the
memory freed here lets more layers keep theirs instead of recomputing the whole layer (a third of its
compute); rebuilding costs one norm or one SwiGLU kernel per kept layer in backward.

How: a kept layer's forward runs inside ``torch.autograd.graph.saved_tensors_hooks``. Each producer
offers its output with a recipe (the function and the inputs it read): the norms through a forward
hook, the product through the MLP's forward, which this module runs itself. When a later operation of
the layer saves that output, or a view of it, for backward, the pack hook stores the recipe and the
view's geometry instead; the unpack hook rebuilds the output once (shared by q, k and v) under the
forward's autocast state and gives back the same view. The rebuilt tensor is the forward's bit for
bit: the same deterministic kernel on the same inputs (tests/fast/test_rebuilt_activations.py,
tests/gpu/test_gpu_rebuilt_activations.py). The recipe's inputs must be unchanged when backward reads
them: their version counters are checked, and a change raises.

An output is offered only while the producer's output tensor is alive (a weak reference), so a later
tensor that happens to reuse its freed memory is never mistaken for it.

Where: decoder layers of transformers' Llama-style models (input_layernorm, self_attn,
post_attention_layernorm, mlp) that keep their activations: not checkpointed ones, whose own
recomputation already keeps nothing (and whose non-reentrant checkpoint owns the saved-tensor hooks).
The product is rebuilt for an MLP whose forward is Llama's ``down(act(gate(x)) * up(x))`` (Llama,
Mistral, Qwen2/3, Gemma, by its code) or Liger's SwiGLU MLP; the norms for Liger's RMSNorm (which keeps
its input; transformers' own RMSNorm does not, so rebuilding its output would keep as much as it
frees). It saves memory only where the LoRA keeps its input rather than a dropped-out copy: dropout 0,
or seeded dropout (tuner.plan.decide.RunPlan.rebuild_activations says where). CUDA graphs capture the
rebuilding kernels into the backward graph like any other.
"""

from __future__ import annotations

import functools
import weakref

import torch

_OWN_FORWARD = "_rebuilt_activations_forward"  # the instance's forward before install (None: its class's)


def _llama_mlp_forward(self, x):
    # transformers' LlamaMLP.forward, byte for byte: an MLP whose forward compiles to the same code is
    # this computation (tests check Llama's, Mistral's, Qwen2's and Gemma's)
    down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
    return down_proj


def _same_code(function, reference) -> bool:
    code, ref = getattr(function, "__code__", None), reference.__code__
    return code is not None and (code.co_code, code.co_names, code.co_consts) == (
        ref.co_code,
        ref.co_names,
        ref.co_consts,
    )


def gated_product(mlp):
    """The function ``(gate, up) -> product`` of ``mlp``'s forward where it is a Llama-style gated MLP
    this module knows, else None."""
    forward = getattr(mlp.forward, "__func__", mlp.forward)
    if not all(hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
        return None
    if getattr(forward, "__qualname__", "") == "LigerSwiGLUMLP.forward":
        swiglu = forward.__globals__.get("LigerSiLUMulFunction")
        return None if swiglu is None else swiglu.apply
    if hasattr(mlp, "act_fn") and _same_code(forward, _llama_mlp_forward):
        act = mlp.act_fn
        return lambda gate, up: act(gate) * up
    return None


def keeps_its_input(norm) -> bool:
    """Whether ``norm``'s backward keeps its input, so that rebuilding its output from that input costs
    no memory: Liger's RMSNorm (its class, or transformers' class with Liger's forward bound)."""
    forward = getattr(norm.forward, "__func__", norm.forward)
    return (
        type(norm).__name__ == "LigerRMSNorm"
        or getattr(forward, "__qualname__", "") == "LigerRMSNorm.forward"
    )


class _Recipe:
    """How to make one offered output again: ``make()`` under the autocast state it ran in."""

    __slots__ = ("make", "inputs", "versions", "autocast", "dtype", "shape", "stride", "offset", "built")

    def __init__(self, output: torch.Tensor, make, inputs: tuple[torch.Tensor, ...]):
        self.make, self.inputs = make, inputs
        self.versions = tuple(t._version for t in inputs)
        device = output.device.type
        self.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        self.dtype, self.shape, self.stride = output.dtype, output.shape, output.stride()
        self.offset = output.storage_offset()
        self.built = None

    def output(self) -> torch.Tensor:
        if self.built is None:
            if any(t._version != v for t, v in zip(self.inputs, self.versions, strict=True)):
                raise RuntimeError(
                    "tuner.fast.rebuilt_activations: an input of a rebuilt activation was modified in "
                    "place between forward and backward; run without TUNER_REBUILD_ACTIVATIONS"
                )
            device, dtype, enabled = self.autocast
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=enabled, cache_enabled=False):
                built = self.make()
            if (built.dtype, built.shape, built.stride()) != (self.dtype, self.shape, self.stride):
                raise RuntimeError(
                    f"tuner.fast.rebuilt_activations: rebuilt {built.dtype} {tuple(built.shape)} strides "
                    f"{built.stride()}, forward made {self.dtype} {tuple(self.shape)} strides {self.stride}"
                )
            self.built = built
        return self.built


class _Saved:
    """What the pack hook stores for a view of an offered output."""

    __slots__ = ("recipe", "shape", "stride", "offset")

    def __init__(self, recipe: _Recipe, view: torch.Tensor):
        self.recipe = recipe
        self.shape, self.stride = view.shape, view.stride()
        self.offset = view.storage_offset() - recipe.offset


class _Offers:
    """The outputs offered during one forward of one layer: (weak reference, data pointer, recipe)."""

    def __init__(self):
        self.entries: list = []

    def offer(self, output: torch.Tensor, make, inputs) -> None:
        pointer = output.untyped_storage().data_ptr()
        if pointer:  # an empty tensor has no memory to free
            self.entries.append((weakref.ref(output), pointer, _Recipe(output, make, inputs)))

    def pack(self, tensor: torch.Tensor):
        if not self.entries or tensor.layout is not torch.strided:
            return tensor
        pointer = tensor.untyped_storage().data_ptr()
        for ref, offered_pointer, recipe in self.entries:
            # while the offered output is alive its storage holds that address: the saved tensor is a
            # view of it (of its dtype: not a reinterpretation)
            if offered_pointer == pointer and tensor.dtype == recipe.dtype and ref() is not None:
                return _Saved(recipe, tensor)
        return tensor


def _unpack(saved):
    if not isinstance(saved, _Saved):
        return saved
    output = saved.recipe.output()
    return output.as_strided(saved.shape, saved.stride, output.storage_offset() + saved.offset)


class _Layer:
    """One installed layer: its offers while its forward runs, and the hooks to take off."""

    def __init__(self, layer, product, norms: list):
        self.layer, self.product, self.norms = layer, product, norms
        self.offers: _Offers | None = None
        self.handles = [norm.register_forward_hook(self._norm_done) for norm in norms]

    def forward(self, own, *args, **kwargs):
        if not torch.is_grad_enabled():
            return own(*args, **kwargs)
        self.offers = _Offers()
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.offers.pack, _unpack):
                return own(*args, **kwargs)
        finally:
            self.offers = None

    def _norm_done(self, norm, args, output):
        if self.offers is not None and torch.is_grad_enabled() and isinstance(output, torch.Tensor):
            x = args[0]  # its forward, not the module: the rebuild runs no hooks
            self.offers.offer(output, functools.partial(norm.forward, x), (x,))

    def mlp_forward(self, mlp, x):
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        product = self.product(gate, up)
        if self.offers is not None:
            self.offers.offer(product, functools.partial(self.product, gate, up), (gate, up))
        return mlp.down_proj(product)


def _layer_parts(layer, norm_keeps_input):
    """(gated product or None, norms to rebuild) of a decoder layer."""
    mlp = getattr(layer, "mlp", None)
    product = None if mlp is None else gated_product(mlp)
    names = ("input_layernorm", "post_attention_layernorm")
    norms = [getattr(layer, n) for n in names if getattr(layer, n, None) is not None]
    return product, [norm for norm in norms if norm_keeps_input(norm)]


def rebuild_activations(layers, norm_keeps_input=keeps_its_input) -> int:
    """Rebuild the cheap activations (see the module docstring) of these decoder layers in backward;
    ``norm_keeps_input(norm)`` says which norms' outputs to rebuild (default: Liger's). Layers with
    gradient checkpointing on are left alone. Returns how many layers rebuild something. Idempotent."""
    count = 0
    for layer in layers:
        if getattr(layer, "gradient_checkpointing", False):
            continue
        if _OWN_FORWARD in layer.__dict__:
            count += 1
            continue
        product, norms = _layer_parts(layer, norm_keeps_input)
        if product is None and not norms:
            continue
        state = _Layer(layer, product, norms)
        layer.__dict__[_OWN_FORWARD] = layer.__dict__.get("forward"), state
        layer.forward = functools.partial(state.forward, layer.forward)
        if product is not None:
            mlp = layer.mlp
            mlp.__dict__[_OWN_FORWARD] = mlp.__dict__.get("forward"), None
            mlp.forward = functools.partial(state.mlp_forward, mlp)
        count += 1
    return count


def remove(layers) -> int:
    """Undo :func:`rebuild_activations` on these layers. Returns how many it undid."""
    count = 0
    for layer in layers:
        if _OWN_FORWARD not in layer.__dict__:
            continue
        own, state = layer.__dict__.pop(_OWN_FORWARD)
        for handle in state.handles:
            handle.remove()
        modules = [(layer, own)]
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and _OWN_FORWARD in mlp.__dict__:
            modules.append((mlp, mlp.__dict__.pop(_OWN_FORWARD)[0]))
        for module, forward in modules:
            if forward is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = forward
        count += 1
    return count
