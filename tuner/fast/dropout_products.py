"""Seeded LoRA dropout made inside the LoRA products: the dropped-out input is never written.

Why: where tuner.fast.seeded_dropout draws the LoRA dropout from a seed, the fused LoRA linear still
made the dropped-out input with one kernel (a write of 2 bytes per element) and read it back into the
first LoRA product with a second; backward made it again for the A gradient and wrote the product
``grad_h @ A`` before adding its dropped-out part to the input gradient. The dropout kernel alone took
31-48 us a call at 4096 tokens (bench/probes/seeded_dropout_speed.py), 24 ms of an 8 GiB card's step.

How: each kernel makes the dropped-out tiles it needs in registers, from the seed and the elements'
positions, with seeded_dropout's Philox flags, and multiplies them there (Triton ``tl.dot``, LoRA ranks
16-128): :func:`dropped_product` is ``dropped(x) @ A^T``; :func:`add_dropped_product_` adds
``dropped(grad_h @ A)`` to the input gradient; :func:`dropped_product_grad` is the A gradient
``grad_h^T @ dropped(x)``, summed over at most 8 row splits and then the splits in order, so it is the
same on every run. The masks are seeded_dropout.dropped's exactly. A layer launches one kernel fewer per
adapted linear in forward and in backward.

Used by tuner.fast.lora_fused where the run plan asks for it (tuner.plan.decide.RunPlan.seeded_product,
the setting TUNER_DROPOUT_PRODUCT, off until measured on a GPU) and :func:`product_applies`.
"""

from __future__ import annotations

import torch

from tuner.fast.seeded_dropout import (
    Seed,
    group_flags,
    keep_scale,
    on_device,
    philox_key,
    seed_arguments,
    threshold,
    triton,
)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _tile_flags(key, stream, row, start, width, below, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # the keep flags of a [rows, width] tensor's tile at rows ``row``, columns from ``start`` (width and
        # start multiples of 8, so that the tile's groups are whole)
        group = (row[:, None] * width + start) // 8 + tl.arange(0, BLOCK_N // 8).to(tl.int64)[None, :]
        return group_flags(key, stream, group, below, BLOCK_M, BLOCK_N // 8)

    @triton.jit
    def _dropped_tile(
        x_ptr,
        key,
        stream,
        row,
        start,
        rows,
        width,
        below,
        scale,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # a tile of dropped(x), made in registers and rounded to x's dtype as dropped() writes it
        column = start + tl.arange(0, BLOCK_N)
        inside = (row[:, None] < rows) & (column[None, :] < width)
        x = tl.load(x_ptr + row[:, None] * width + column[None, :], mask=inside, other=0.0)
        keep = _tile_flags(key, stream, row, start, width, below, BLOCK_M, BLOCK_N)
        return tl.where(keep, x.to(tl.float32) * scale, 0.0).to(x_ptr.dtype.element_ty)

    @triton.jit
    def _dropped_product(
        x_ptr,
        a_ptr,
        h_ptr,
        seed_ptr,
        key,
        stream,
        rows,
        width,
        below,
        scale,
        RANK: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
        ON_DEVICE: tl.constexpr,
    ):
        # h[BLOCK_M rows] = dropped(x) @ a^T, the dropped-out tile made in registers: x is [rows, width]
        # (width a multiple of 8, so each row starts a Philox group), a is [RANK, width], h [rows, RANK].
        # The dropped-out values are rounded to x's dtype before the product, as dropped() writes them.
        row = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        rank = tl.arange(0, RANK)
        key = philox_key(seed_ptr, key, ON_DEVICE)
        total = tl.zeros((BLOCK_M, RANK), dtype=tl.float32)
        for k in range(0, width, BLOCK_K):
            column = k + tl.arange(0, BLOCK_K)
            dropped = _dropped_tile(x_ptr, key, stream, row, k, rows, width, below, scale, BLOCK_M, BLOCK_K)
            a = tl.load(
                a_ptr + rank[None, :] * width + column[:, None], mask=column[:, None] < width, other=0.0
            )
            total = tl.dot(dropped, a, total, input_precision=PRECISION)
        tl.store(
            h_ptr + row[:, None] * RANK + rank[None, :],
            total.to(h_ptr.dtype.element_ty),
            mask=row[:, None] < rows,
        )

    @triton.jit
    def _dropped_product_grad(
        g_ptr,
        x_ptr,
        part_ptr,
        seed_ptr,
        key,
        stream,
        rows,
        width,
        below,
        scale,
        rows_per_split,
        RANK: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
        ON_DEVICE: tl.constexpr,
    ):
        # part[split] = g[split's rows]^T @ dropped(x)[split's rows, column block]: the LoRA A gradient's
        # share of one split of the rows (summed by the caller, in a fixed order), the dropped-out tile
        # made in registers; x is [rows, width] (width a multiple of 8), g [rows, RANK]
        start = tl.program_id(0) * BLOCK_N
        split = tl.program_id(1)
        column = start + tl.arange(0, BLOCK_N)
        rank = tl.arange(0, RANK)
        key = philox_key(seed_ptr, key, ON_DEVICE)
        total = tl.zeros((RANK, BLOCK_N), dtype=tl.float32)
        first = split.to(tl.int64) * rows_per_split
        for m in range(0, rows_per_split, BLOCK_M):
            row = first + m + tl.arange(0, BLOCK_M).to(tl.int64)
            g = tl.load(g_ptr + row[:, None] * RANK + rank[None, :], mask=row[:, None] < rows, other=0.0)
            dropped = _dropped_tile(
                x_ptr, key, stream, row, start, rows, width, below, scale, BLOCK_M, BLOCK_N
            )
            total = tl.dot(tl.trans(g), dropped, total, input_precision=PRECISION)
        where = part_ptr + split.to(tl.int64) * RANK * width + rank[:, None] * width + column[None, :]
        tl.store(where, total, mask=column[None, :] < width)

    @triton.jit
    def _add_dropped_product(
        out_ptr,
        g_ptr,
        a_ptr,
        seed_ptr,
        key,
        stream,
        rows,
        width,
        below,
        scale,
        RANK: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
        ON_DEVICE: tl.constexpr,
    ):
        # out[tile] += dropped(g @ a)[tile]: g is [rows, RANK], a [RANK, width], out [rows, width] (width
        # a multiple of 8); the product stays in registers, in fp32, and is added with one rounding
        row = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        start = tl.program_id(1) * BLOCK_N
        column = start + tl.arange(0, BLOCK_N)
        rank = tl.arange(0, RANK)
        g = tl.load(g_ptr + row[:, None] * RANK + rank[None, :], mask=row[:, None] < rows, other=0.0)
        a = tl.load(a_ptr + rank[:, None] * width + column[None, :], mask=column[None, :] < width, other=0.0)
        product = tl.dot(g, a, input_precision=PRECISION)
        keep = _tile_flags(
            philox_key(seed_ptr, key, ON_DEVICE), stream, row, start, width, below, BLOCK_M, BLOCK_N
        )
        inside = (row[:, None] < rows) & (column[None, :] < width)
        where = out_ptr + row[:, None] * width + column[None, :]
        out = tl.load(where, mask=inside, other=0.0).to(tl.float32)
        total = tl.where(keep, tl.fma(product, scale, out), out)
        tl.store(where, total.to(out_ptr.dtype.element_ty), mask=inside)


PRODUCT_RANKS = (16, 32, 64, 128)  # LoRA ranks the fused product takes (tl.dot's tile sizes)
PRODUCT_BLOCK_M, PRODUCT_BLOCK_K = 32, 128  # dropped_product's tiles: rows x columns of x
GRADIENT_BLOCK_M, GRADIENT_BLOCK_N = 64, 128  # the backward kernels' tiles: rows x columns
GRADIENT_SPLITS, GRADIENT_SPLIT_ROWS = 8, 512  # dropped_product_grad: at most 8 splits of >= 512 rows


def product_applies(x: torch.Tensor, lora_A: torch.Tensor) -> bool:
    """Whether :func:`dropped_product` takes ``x`` (2-D, where :func:`applies`) and ``lora_A``."""
    return (
        x.dim() == 2
        and lora_A.dim() == 2
        and lora_A.shape[0] in PRODUCT_RANKS
        and lora_A.shape[1] == x.shape[1]
        and x.shape[1] % 8 == 0
        and lora_A.dtype == x.dtype
        and lora_A.is_contiguous()
        and lora_A.device == x.device
    )


def _mask_arguments(seed: Seed, tensor: torch.Tensor, p: float) -> tuple:
    # what the product kernels take after their tensors: the seed, the [rows, width] the mask covers
    # (``tensor``'s), and the drop threshold and keep scale of rate p
    return (*seed_arguments(seed, tensor), *tensor.shape, threshold(p), keep_scale(p))


def _precision(dtype: torch.dtype) -> str:
    # fp32 operands multiplied in fp32 (tl.dot rounds them to tf32 by default); 16-bit operands ignore it
    return "ieee" if dtype == torch.float32 else "tf32"


def dropped_product(x: torch.Tensor, lora_A: torch.Tensor, seed: Seed, p: float) -> torch.Tensor:
    """``dropped(x, seed, p) @ lora_A.t()`` in one kernel: the dropped-out copy of ``x`` is never written
    (where :func:`product_applies`). The same mask as seeded_dropout.dropped's; the product rounds once, as a
    matrix product does."""
    rows, width = x.shape
    rank = lora_A.shape[0]
    out = torch.empty(rows, rank, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(rows, PRODUCT_BLOCK_M),)
    _dropped_product[grid](
        x,
        lora_A,
        out,
        *_mask_arguments(seed, x, p),
        RANK=rank,
        BLOCK_M=PRODUCT_BLOCK_M,
        BLOCK_K=PRODUCT_BLOCK_K,
        PRECISION=_precision(x.dtype),
        ON_DEVICE=on_device(seed),
    )
    return out


def dropped_product_grad(grad: torch.Tensor, x: torch.Tensor, seed: Seed, p: float) -> torch.Tensor:
    """``grad.t() @ dropped(x, seed, p)`` in fp32 (the LoRA A gradient), the dropped-out input made tile by
    tile and never written: ``grad`` is [rows, rank], ``x`` [rows, width] as :func:`product_applies`
    takes it. The rows are summed in splits, then the splits in order: the same result every time."""
    rows, width = x.shape
    rank = grad.shape[1]
    if not (grad.is_contiguous() and x.is_contiguous() and grad.shape[0] == rows and grad.dtype == x.dtype):
        raise ValueError("dropped_product_grad needs contiguous [rows, rank] and [rows, width] of one dtype")
    # enough programs to fill a GPU's multiprocessors at a few thousand rows, no split under a block
    splits = max(1, min(GRADIENT_SPLITS, rows // GRADIENT_SPLIT_ROWS))
    rows_per_split = triton.cdiv(triton.cdiv(rows, splits), GRADIENT_BLOCK_M) * GRADIENT_BLOCK_M
    parts = torch.empty(splits, rank, width, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(width, GRADIENT_BLOCK_N), splits)
    _dropped_product_grad[grid](
        grad,
        x,
        parts,
        *_mask_arguments(seed, x, p),
        rows_per_split,
        RANK=rank,
        BLOCK_M=GRADIENT_BLOCK_M,
        BLOCK_N=GRADIENT_BLOCK_N,
        PRECISION=_precision(x.dtype),
        ON_DEVICE=on_device(seed),
    )
    return parts[0] if splits == 1 else parts.sum(0)


def add_dropped_product_(
    out: torch.Tensor, grad: torch.Tensor, lora_A: torch.Tensor, seed: Seed, p: float
) -> torch.Tensor:
    """``out += dropped(grad @ lora_A)`` in place, one kernel (the input gradient through the dropout and
    the first LoRA product): ``grad`` is [rows, rank], ``lora_A`` [rank, width] as
    :func:`product_applies` takes it, ``out`` contiguous [rows, width] of their dtype. The product is
    not rounded before the add, as seeded_dropout.add_dropped_ of a separate product would round it. Returns
    ``out``."""
    rows, width = out.shape
    rank = lora_A.shape[0]
    if not (
        out.is_contiguous()
        and grad.is_contiguous()
        and grad.shape == (rows, rank)
        and out.dtype == grad.dtype == lora_A.dtype
    ):
        raise ValueError("add_dropped_product_ needs contiguous [rows, rank] and [rows, width] of one dtype")
    grid = (triton.cdiv(rows, GRADIENT_BLOCK_M), triton.cdiv(width, GRADIENT_BLOCK_N))
    _add_dropped_product[grid](
        out,
        grad,
        lora_A,
        *_mask_arguments(seed, out, p),
        RANK=rank,
        BLOCK_M=GRADIENT_BLOCK_M,
        BLOCK_N=GRADIENT_BLOCK_N,
        PRECISION=_precision(out.dtype),
        ON_DEVICE=on_device(seed),
        enable_fp_fusion=False,
    )
    return out
