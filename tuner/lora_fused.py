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
    from bitsandbytes.functional import dequantize_4bit

    return _cast(dequantize_4bit(weight, quant_state), dtype)


class _FusedLoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scale, p, quant_state, dtype, out_dtype):
        # Custom Functions see their inputs uncast under autocast: every dtype here is explicit.
        # 2-D throughout: a 2-D F.linear is one addmm, and its output (not a view) can be added to
        # in place; the caller unflattens it outside this Function.
        x2 = _cast(x.reshape(-1, x.shape[-1]), dtype)
        y = F.linear(x2, _weight(weight, quant_state, dtype), None if bias is None else _cast(bias, dtype))
        A, B = _cast(lora_A, dtype), _cast(lora_B, dtype)
        xd, mask = torch.native_dropout(x2, p, True) if p > 0 else (x2, None)
        h = torch.mm(xd, A.t())
        y.addmm_(h, B.t(), alpha=scale)
        ctx.save_for_backward(xd, h, mask, A, B, weight)
        ctx.scale, ctx.p, ctx.quant_state, ctx.dtype = scale, p, quant_state, dtype
        ctx.x_dtype, ctx.x_shape, ctx.A_dtype, ctx.B_dtype = x.dtype, x.shape, lora_A.dtype, lora_B.dtype
        return _cast(y, out_dtype)

    @staticmethod
    def backward(ctx, gy):
        xd, h, mask, A, B, weight = ctx.saved_tensors
        need_x, _, _, need_A, need_B = ctx.needs_input_grad[:5]
        gy = _cast(gy.reshape(-1, gy.shape[-1]), ctx.dtype)
        gx = gA = gB = None
        if need_B:
            gB = _cast(_mm(gy.t(), h, ctx.scale), ctx.B_dtype)
        if need_x or need_A:
            gh = _mm(gy, B, ctx.scale)
            if need_A:
                gA = _cast(torch.mm(gh.t(), xd), ctx.A_dtype)
            if need_x:
                gx = torch.mm(gy, _weight(weight, ctx.quant_state, ctx.dtype))
                if mask is None:
                    gx.addmm_(gh, A)
                else:
                    gx.addcmul_(torch.mm(gh, A), mask, value=1.0 / (1.0 - ctx.p))
                gx = _cast(gx, ctx.x_dtype).view(ctx.x_shape)
        return gx, None, None, gA, gB, None, None, None, None, None


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


def _forward(layer, unfused, quantized: bool, x, *args, **kwargs):
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
        x, weight, base.bias, A, B, layer.scaling[name], p, quant_state, dtype, out_dtype
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


def fuse_lora(model: nn.Module) -> int:
    """Route the training forward of ``model``'s LoRA linears through one fused autograd Function
    each (see the module docstring for when it falls back). Idempotent. Returns how many layers are
    fused."""
    count = 0
    for layer in model.modules():
        quantized = _kind(layer)
        if quantized is None:
            continue
        if _UNFUSED not in layer.__dict__:
            unfused = layer.forward
            layer.__dict__[_UNFUSED] = layer.__dict__.get("forward")
            layer.forward = functools.partial(_forward, layer, unfused, quantized)
        count += 1
    return count


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
