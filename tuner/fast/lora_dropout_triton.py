"""The Triton kernels of tuner.fast.lora_dropout_kernels (imported only where Triton is installed; the
kernels call each other by module-level name, which Triton resolves as globals)."""

import triton
import triton.language as tl


@triton.jit
def keep_mask(seed, rows, cols, n_cols, p):
    # The one definition of the mask: every kernel draws an element's keep bit from it
    return tl.rand(seed, rows[:, None] * n_cols + cols[None, :]) >= p


@triton.jit
def dropped_tile(x_ptr, seed, rows, cols, T, K, p, scale):
    # x[rows, cols] * keep / (1 - p), in x's dtype (as a dropped-out copy would hold it); 0 outside x
    inside = (rows[:, None] < T) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None] * K + cols[None, :], mask=inside, other=0.0)
    return tl.where(keep_mask(seed, rows, cols, K, p), x.to(tl.float32) * scale, 0.0).to(x.dtype)


@triton.jit
def rank_tile(ptr, rows, ranks, n_rows, R):
    # ptr[rows, ranks] of a row-major (n_rows, R) matrix; 0 outside it
    inside = (rows[:, None] < n_rows) & (ranks[None, :] < R)
    return tl.load(ptr + rows[:, None] * R + ranks[None, :], mask=inside, other=0.0)


@triton.jit
def masked_x_at_kernel(
    x_ptr, a_ptr, h_ptr, seed_ptr, T, K, R, p, scale,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ranks = tl.arange(0, BLOCK_R)
    seed = tl.load(seed_ptr)
    acc = tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        dropped = dropped_tile(x_ptr, seed, rows, cols, T, K, p, scale)
        a = tl.load(
            a_ptr + ranks[None, :] * K + cols[:, None],
            mask=(cols[:, None] < K) & (ranks[None, :] < R),
            other=0.0,
        )
        acc = tl.dot(dropped, a.to(dropped.dtype), acc)
    out = (rows[:, None] < T) & (ranks[None, :] < R)
    tl.store(h_ptr + rows[:, None] * R + ranks[None, :], acc.to(h_ptr.dtype.element_ty), mask=out)


@triton.jit
def masked_gradient_a_kernel(
    gh_ptr, x_ptr, part_ptr, seed_ptr, T, K, R, rows_per_split, p, scale,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(1)
    ranks = tl.arange(0, BLOCK_R)
    seed = tl.load(seed_ptr)
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    first = split * rows_per_split
    for start in range(first, first + rows_per_split, BLOCK_T):
        rows = start + tl.arange(0, BLOCK_T)
        dropped = dropped_tile(x_ptr, seed, rows, cols, T, K, p, scale)
        gh = rank_tile(gh_ptr, rows, ranks, T, R)
        acc = tl.dot(tl.trans(gh.to(dropped.dtype)), dropped, acc)
    out = (ranks[:, None] < R) & (cols[None, :] < K)
    tl.store(part_ptr + split * R * K + ranks[:, None] * K + cols[None, :], acc, mask=out)


@triton.jit
def add_masked_grad_x_kernel(
    gx_ptr, gh_ptr, a_ptr, seed_ptr, T, K, R, p, scale,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, BLOCK_R)
    seed = tl.load(seed_ptr)
    gh = rank_tile(gh_ptr, rows, ranks, T, R)
    a = tl.load(
        a_ptr + ranks[:, None] * K + cols[None, :], mask=(ranks[:, None] < R) & (cols[None, :] < K), other=0.0
    )
    product = tl.dot(gh, a.to(gh.dtype))
    keep = keep_mask(seed, rows, cols, K, p)
    inside = (rows[:, None] < T) & (cols[None, :] < K)
    offsets = rows[:, None] * K + cols[None, :]
    gx = tl.load(gx_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    gx = tl.where(keep, tl.fma(product, scale, gx), gx)
    tl.store(gx_ptr + offsets, gx.to(gx_ptr.dtype.element_ty), mask=inside)
