"""``out += src * keep * scale`` in one pass: the input gradient of a dropped-out LoRA input.

Why: tuner.fast.lora_fused's backward adds the LoRA path's input gradient through the dropout mask with
``out.addcmul_(src, keep, value=scale)``. With a bool mask beside bf16 tensors, PyTorch's
TensorIterator cannot take its vectorized path (mixed dtypes) and runs its unrolled, casting kernel:
97 us per 4096 x 4096 call on an H200, ~1.15 TB/s, 7% of a Llama-2 QLoRA 4096 step's GPU time
(224 calls per step; torch.profiler, bench/history/benchmarks-2026-11.md). This Triton kernel reads the three tensors
and writes one at full bandwidth. Same arithmetic as addcmul's CUDA kernel, ``a + alpha * (b * c)`` in
fp32, which the compiler turns into one fused multiply-add: ``fma(src, scale, out)`` where kept.

Used on CUDA when Triton imports, the tensors are contiguous and alike, and TUNER_DROPOUT_GRAD_KERNEL
is on; ``addcmul_`` otherwise (CPU, other layouts).
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _kernel():
    """The compiled Triton kernel, or None where Triton is not installed (CPU builds of torch)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def add_masked(out_ptr, src_ptr, keep_ptr, n, scale, BLOCK: tl.constexpr):
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        out = tl.load(out_ptr + offsets, mask=inside).to(tl.float32)
        src = tl.load(src_ptr + offsets, mask=inside).to(tl.float32)
        keep = tl.load(keep_ptr + offsets, mask=inside)
        total = tl.where(keep != 0, tl.fma(src, scale, out), out)
        tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=inside)

    return add_masked, triton.cdiv


BLOCK = 4096


def kernel_applies(out: torch.Tensor, src: torch.Tensor, keep: torch.Tensor) -> bool:
    return (
        out.is_cuda
        and out.dtype == src.dtype
        and out.shape == src.shape == keep.shape
        and keep.dtype == torch.bool
        and out.is_contiguous()
        and src.is_contiguous()
        and keep.is_contiguous()
        and _kernel() is not None
    )


def add_masked_(
    out: torch.Tensor, src: torch.Tensor, keep: torch.Tensor, scale: float, *, kernel: bool = True
) -> torch.Tensor:
    """``out += src * keep * scale`` in place (``keep``: the bool dropout mask); returns ``out``.
    ``kernel``: through the Triton kernel where it applies (the caller's choice, bound when LoRA was
    fused), else PyTorch's addcmul."""
    if not (kernel and kernel_applies(out, src, keep)):
        return out.addcmul_(src, keep, value=scale)
    add_masked, cdiv = _kernel()
    n = out.numel()
    # The one fused multiply-add is the explicit tl.fma; no other contraction (the configuration the
    # GPU test found bit-identical to addcmul)
    add_masked[(cdiv(n, BLOCK),)](
        out, src, keep.view(torch.uint8), n, scale, BLOCK=BLOCK, enable_fp_fusion=False
    )
    return out
