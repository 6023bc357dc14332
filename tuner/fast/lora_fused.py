"""A fused LoRA linear for training: base matmul, dropout and both LoRA matmuls in one autograd node.

Why: peft's LoRA forward runs several full-width elementwise kernels per adapted layer on top of
the matmuls, each again in backward: for a 4-bit base a defensive ``clone`` of the base output,
the ``* scaling`` and the ``+``; for a 16-bit base also a cast of ``x`` to the fp32 dtype of the
LoRA weights, which autocast then casts back (and saves that copy for backward). On a long-row
QLoRA step these launches leave the GPU idle for a large part of the step. Here the scaled LoRA
product is added inside the GEMM (``addmm`` with ``alpha``), the scale of the backward products
too, and backward keeps only the dropped-out input, the rank-r activation ``h``, the dropout mask
and the (tiny) LoRA weights; the base weight is not saved in a second dtype, a 4-bit one is
dequantized again in backward.

What stays the same: the math of vanilla LoRA, ``y = x W^T + b + s * dropout(x) A^T B^T`` with
peft's scaling ``s`` and dropout ``p``; the output dtype (the autocast dtype for a 16-bit base, as
``F.linear`` gives; for a bitsandbytes 4-bit base ``x``'s dtype promoted with it, as its
``.to(input dtype)`` then peft's sum gives); gradients for ``x`` in ``x``'s dtype and for the LoRA
weights in theirs (fp32). Everything is computed in the autocast dtype when autocast is on, else
in ``x``'s dtype: without autocast a 16-bit model's LoRA product is then bf16/fp16 where peft
computes it in fp32. The products are rounded once instead of after each step, so half-precision
results differ from peft's by rounding.

Dropout regeneration (opt-in: ``fuse_lora(model, regenerate_dropout=True)`` or
:func:`set_dropout_regeneration` on the layers that want it). Why: with dropout on, backward needs
the dropped-out input and the mask, and by default each layer keeps both, a copy of its input and a
bool tensor of that size, although q, k and v (and gate and up) read one input: ~0.24 GiB per Llama
7B decoder layer at 4096 tokens. With gradient checkpointing of every layer the peak is at the end
of backward with one recomputed layer alive, so that is what it lowers. With regeneration a layer
keeps its input instead (one storage for all the layers reading it; where autocast casts it, the
cast copy, still less than copy and mask) and the state of the device's generator from just before
the mask was drawn; backward sets that state, draws the same mask and dropped-out input again and
puts the generator back as it found it, so no later randomness shifts. Cost: one more dropout
kernel per layer in backward and two generator state swaps (a few microseconds of host time).
CPU and CUDA only (other devices keep copy and mask); not for layers captured in CUDA graphs (the
state swaps are host work that a replay would not repeat; tuner.fast.layer_graphs only graphs layers
that are not checkpointed, and only checkpointed layers regenerate). No effect when dropout is off or
where it falls back. As with dropout off, the kept input must not be changed in place before
backward (autograd's version check refuses it).

Seeded dropout (``fuse_lora(model, seeded_dropout=True)``, what the run plan picks where every layer
replays as a CUDA graph: tuner.plan.decide.RunPlan.seeded_dropout): the mask
is drawn from a seed by tuner.fast.seeded_dropout's kernels, in forward and again in backward, so a
layer keeps its input and the seed (8 bytes on the device inside CUDA graphs, two integers on the host in
eager steps); regeneration is then moot. Where it does not apply (a CPU, no Triton) the paths above run.

When it falls back to peft's own forward, unchanged: in eval mode (generation, evaluation), with
the adapters disabled or merged, with no or several active adapters, for DoRA or another LoRA
variant, when extra arguments are passed (``adapter_names`` for mixed batches), when the base
weight or bias is trainable, when the dropout is not a plain ``nn.Dropout``, and for a 4-bit
weight without its quant state. Only ``peft.tuners.lora.layer.Linear`` over a plain ``nn.Linear``
and ``peft.tuners.lora.bnb.Linear4bit`` are patched. A training-mode forward under ``no_grad`` is
fused too: reentrant gradient checkpointing runs its first forward that way, and its recomputation
must draw the same dropout mask and round the same way.

The fused path reads ``base_layer.weight`` directly and skips the base layer's own forward and its
hooks, so the weight must be materialised on the device: not under DeepSpeed ZeRO-3 (which gathers
it only inside those hooks) nor with accelerate's offloading. The caller decides when to fuse.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import nn
from torch.nn import functional as F

from tuner.fast import dropout_products, seeded_dropout
from tuner.fast.dropout_grad import add_masked_
from tuner.fast.kbit_dequant import dequantize_4bit

_UNFUSED = "_lora_unfused_forward"  # the instance's own forward before fusing; None: its class's


def _mm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    # beta=0 never reads the uninitialised output; alpha scales in the GEMM's epilogue, one kernel
    return a.new_empty(a.shape[0], b.shape[1]).addmm_(a, b, beta=0, alpha=alpha)


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # A .to() that changes nothing still costs a dispatch (~3 us of host time); a layer calls up to
    # 11 of them per step, most of them no-ops in bf16 training, and the GPU waits on the host.
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def _weight(weight: torch.Tensor, quant_state, dtype: torch.dtype) -> torch.Tensor:
    if quant_state is None:
        return _cast(weight, dtype)
    return _cast(dequantize_4bit(weight, quant_state), dtype)


def _generator(device: torch.device):
    """The generator ``native_dropout`` draws from on ``device``, or None where dropout is not
    regenerated (other device types: their dropout is saved as without regeneration)."""
    if device.type == "cuda":
        index = device.index
        return torch.cuda.default_generators[torch.cuda.current_device() if index is None else index]
    return torch.default_generator if device.type == "cpu" else None


def _redraw(x2: torch.Tensor, p: float, generator, state) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward's dropout of ``x2`` drawn again from the generator state it started from; the
    generator then continues as if nothing had been drawn, so later randomness does not shift."""
    entry = generator.get_state()
    generator.set_state(state)
    try:
        return torch.native_dropout(x2, p, True)
    finally:
        generator.set_state(entry)


class _FusedLoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x,
        weight,
        bias,
        lora_A,
        lora_B,
        scale,
        p,
        quant_state,
        dtype,
        out_dtype,
        seeded,
        product,
        regenerate,
        grad_kernel,
    ):
        # Custom Functions see their inputs uncast under autocast: every dtype here is explicit.
        # 2-D throughout: a 2-D F.linear is one addmm, and its output (not a view) can be added to
        # in place; the caller unflattens it outside this Function.
        x2 = _cast(x.reshape(-1, x.shape[-1]), dtype)
        y = F.linear(x2, _weight(weight, quant_state, dtype), None if bias is None else _cast(bias, dtype))
        A, B = _cast(lora_A, dtype), _cast(lora_B, dtype)
        seed = h = None
        if p > 0 and seeded and seeded_dropout.applies(x2):
            # the mask is a function of a seed: x2 is kept (shared with the other layers
            # reading x), the dropped-out copy lives only until the product below, or never where
            # the product makes it tile by tile
            seed, mask, kept = seeded_dropout.draw_seed(x2.device), None, x2
            if product and dropout_products.product_applies(x2, A):
                h = dropout_products.dropped_product(x2, A, seed, p)
            else:
                xd = seeded_dropout.dropped(x2, seed, p)
        elif p > 0:
            generator = _generator(x2.device) if regenerate else None
            if generator is None:
                xd, mask = torch.native_dropout(x2, p, True)
                kept = xd
            else:
                # x2 is kept, not xd and the mask. Where it is a view of x it shares x's storage
                # with the other layers reading x (q, k, v) and costs nothing more. Where the cast
                # made it a copy (an fp32 x under bf16 autocast) it is xd's size, still less than xd
                # and the mask together; keeping the wider x instead and casting again in backward
                # would be less only where three or more layers share x, and more for a layer that
                # reads its own input (o, down), whose input is the larger one in an MLP.
                ctx.rng = generator, generator.get_state()
                xd, mask, kept = torch.native_dropout(x2, p, True)[0], None, x2
        else:
            xd = kept = x2
            mask = None
        if h is None:
            h = torch.mm(xd, A.t())
        y.addmm_(h, B.t(), alpha=scale)
        # a seed drawn on the device is saved as a tensor, one drawn on the host (eager) is two integers
        host_seed = isinstance(seed, seeded_dropout.HostSeed)
        ctx.save_for_backward(kept, h, mask, A, B, weight, None if host_seed else seed)
        ctx.host_seed = seed if host_seed else None
        ctx.scale, ctx.p, ctx.quant_state, ctx.dtype = scale, p, quant_state, dtype
        ctx.grad_kernel, ctx.product = grad_kernel, product
        ctx.x_dtype, ctx.x_shape, ctx.A_dtype, ctx.B_dtype = x.dtype, x.shape, lora_A.dtype, lora_B.dtype
        return _cast(y, out_dtype)

    @staticmethod
    def backward(ctx, gy):
        xd, h, mask, A, B, weight, seed = ctx.saved_tensors
        seed = ctx.host_seed if seed is None else seed
        need_x, _, _, need_A, need_B = ctx.needs_input_grad[:5]
        gy = _cast(gy.reshape(-1, gy.shape[-1]), ctx.dtype)
        gx = gA = gB = None
        if need_B:
            gB = _cast(_mm(gy.t(), h, ctx.scale), ctx.B_dtype)
        if need_x or need_A:
            gh = _mm(gy, B, ctx.scale)
            # seeded dropout made inside the products: the dropped-out input is never written
            in_products = seed is not None and ctx.product and dropout_products.product_applies(xd, A)
            if in_products:
                if need_A:
                    gA = _cast(dropout_products.dropped_product_grad(gh, xd, seed, ctx.p), ctx.A_dtype)
            else:
                if seed is not None:  # seeded dropout: only x2 and the seed were kept
                    xd = seeded_dropout.dropped(xd, seed, ctx.p)
                elif mask is None and ctx.p > 0:  # dropout with regeneration: only x2 was kept
                    xd, mask = _redraw(xd, ctx.p, *ctx.rng)
                if need_A:
                    gA = _cast(torch.mm(gh.t(), xd), ctx.A_dtype)
            del xd  # a regenerated one need not stay alive while gx is computed
            if need_x:
                gx = torch.mm(gy, _weight(weight, ctx.quant_state, ctx.dtype))
                if in_products:
                    dropout_products.add_dropped_product_(gx, gh, A, seed, ctx.p)
                elif seed is not None:
                    seeded_dropout.add_dropped_(gx, torch.mm(gh, A), seed, ctx.p)
                elif mask is None:
                    gx.addmm_(gh, A)
                else:
                    add_masked_(gx, torch.mm(gh, A), mask, 1.0 / (1.0 - ctx.p), kernel=ctx.grad_kernel)
                gx = _cast(gx, ctx.x_dtype).view(ctx.x_shape)
        return gx, None, None, gA, gB, None, None, None, None, None, None, None, None, None


def _fusable_adapter(layer, base: nn.Module) -> str | None:
    """The one adapter the fused path computes, or None where peft's forward must run."""
    if not layer.training or layer.disable_adapters or layer.merged:
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    variants = getattr(layer, "lora_variant", {})  # peft < 0.17 has no variants
    if name not in layer.lora_A or name in variants or layer.use_dora.get(name, False):
        return None
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    return name


def _dropout_p(dropout: nn.Module) -> float | None:
    if isinstance(dropout, nn.Identity) or (isinstance(dropout, nn.Dropout) and not dropout.training):
        return 0.0
    if type(dropout) is nn.Dropout and dropout.p < 1:
        return dropout.p
    return None


def _forward(
    layer,
    unfused,
    quantized: bool,
    grad_kernel: bool,
    seeded: bool,
    product: bool,
    regenerate: bool,
    x,
    *args,
    **kwargs,
):
    base = layer.get_base_layer()
    name = None if args or kwargs else _fusable_adapter(layer, base)
    p = None if name is None else _dropout_p(layer.lora_dropout[name])
    quant_state = getattr(base.weight, "quant_state", None) if quantized else None
    # bitsandbytes repacks weights for its CPU inference kernel, which dequantize_4bit cannot read;
    # its own forward restores a lost quant state
    unreadable = quantized and (quant_state is None or getattr(quant_state, "packing_format_for_cpu", False))
    if p is None or unreadable:
        return unfused(x, *args, **kwargs)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    out_dtype = torch.promote_types(x.dtype, dtype) if quantized else dtype
    weight = base.weight.data if quantized else base.weight
    A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
    y = _FusedLoraLinear.apply(
        x,
        weight,
        base.bias,
        A,
        B,
        layer.scaling[name],
        p,
        quant_state,
        dtype,
        out_dtype,
        seeded,
        product,
        regenerate,
        grad_kernel,
    )
    return y.view(*x.shape[:-1], y.shape[-1])


def _kind(layer) -> bool | None:
    """True for a 4-bit LoRA layer, False for a 16/32-bit one, None for layers not fused."""
    from peft.tuners.lora.layer import Linear

    if type(layer) is Linear:
        return None if layer.fan_in_fan_out or type(layer.get_base_layer()) is not nn.Linear else False
    # A model holding 4-bit LoRA layers has imported peft's bnb module; importing it here would load
    # bitsandbytes, which may be missing or without CUDA.
    bnb = sys.modules.get("peft.tuners.lora.bnb")
    linear4bit = getattr(bnb, "Linear4bit", None)
    return True if linear4bit is not None and type(layer) is linear4bit else None


def fuse_lora(
    model: nn.Module,
    regenerate_dropout: bool = False,
    grad_kernel: bool = True,
    seeded_dropout: bool = False,
    dropout_product: bool = False,
) -> int:
    """Route the training forward of ``model``'s LoRA linears through one fused autograd Function
    each (see the module docstring for when it falls back), with dropout regeneration as
    ``regenerate_dropout`` says; ``grad_kernel``: the dropout-masked input gradient through
    tuner.fast.dropout_grad's Triton kernel where it applies (False: PyTorch's addcmul, for ablation);
    ``seeded_dropout``: CUDA inputs draw their dropout from a seed (tuner.fast.seeded_dropout, where
    Triton imports), which then neither keeps a mask nor needs regeneration; ``dropout_product``: with it,
    the dropped-out input and the first LoRA product are one kernel (tuner.fast.dropout_products)
    where it applies. Idempotent: a layer fused
    before keeps its forward and its settings (:func:`set_dropout_regeneration` changes that one).
    Returns how many layers are fused."""
    count = 0
    for layer in model.modules():
        quantized = _kind(layer)
        if quantized is None:
            continue
        if _UNFUSED not in layer.__dict__:
            unfused = layer.forward
            layer.__dict__[_UNFUSED] = layer.__dict__.get("forward")
            layer.forward = functools.partial(
                _forward,
                layer,
                unfused,
                quantized,
                bool(grad_kernel),
                bool(seeded_dropout),
                bool(dropout_product),
                bool(regenerate_dropout),
            )
        count += 1
    return count


def set_dropout_regeneration(model: nn.Module, on: bool) -> int:
    """Turn dropout regeneration (see the module docstring) on or off for the LoRA linears of
    ``model`` (a model or any module in it, e.g. one decoder layer) fused by :func:`fuse_lora`.
    Not for layers captured in CUDA graphs (see the module docstring). Returns how many layers it set (raises where a fused layer's forward was
    replaced since)."""
    count = 0
    for layer in model.modules():
        if _UNFUSED in layer.__dict__:
            _set_regeneration(layer, on)
            count += 1
    return count


def _set_regeneration(layer: nn.Module, on: bool) -> None:
    # The flag is bound into the partial, not looked up on each call: the step is host-bound.
    forward = layer.__dict__.get("forward")
    if not (type(forward) is functools.partial and forward.func is _forward):
        raise RuntimeError(
            f"the forward of {type(layer).__name__} was replaced after fuse_lora: "
            "dropout regeneration cannot be set on it"
        )
    if forward.args[6] != on:
        layer.forward = functools.partial(_forward, *forward.args[:6], bool(on))


def unfuse_lora(model: nn.Module) -> int:
    """Give the layers fused by :func:`fuse_lora` back their own forward. Returns how many."""
    count = 0
    for layer in model.modules():
        if _UNFUSED in layer.__dict__:
            own = layer.__dict__.pop(_UNFUSED)
            if own is None:
                del layer.forward
            else:
                layer.forward = own
            count += 1
    return count
