"""LoRA dropout drawn from a seed on the GPU: no mask kept, the same mask drawn again in backward.

Why: LoRA dropout through ``torch.native_dropout`` writes the dropped-out input and a bool mask, and
backward needs both. A Llama-2-7B QLoRA step at 4096 tokens spent 24 ms of its 0.41 s of kernels in
672 dropout calls (36 us each: read 32 MiB, write 32 MiB and a 16 MiB mask) and 8 ms more in the
masked input gradient (torch.profiler on an emulated 8 GiB card,
bench/results/profiles/2026-12-04-session12-card8-tuner-copy-stream.txt). Where a layer keeps its
activations the copy and the mask are 1.9 bytes per token per hidden unit per adapted input, about a
third of what a Llama layer keeps (tuner.plan.memory.DROPOUT_BYTES). The earlier way around the memory,
swapping the CUDA generator's state to draw the mask again in backward, is host work a CUDA graph
cannot replay.

How: each dropout draws one seed from torch's CUDA generator (:func:`draw_seed`). While a CUDA graph is
captured that is a 64-bit ``torch.randint`` on the device, which the kernels read from device memory and
each replay draws anew. In eager steps it is drawn on the host, with no launch: the generator's offset,
read and advanced as ``native_dropout`` reserves its own, passed to the kernels by value. A kernel derives
every element's keep flag from the seed and the element's position with Philox-4x32-10 (Triton's
``tl.philox``): one Philox call gives 128 random bits, eight 16-bit uniforms, for eight neighbouring
elements. So the mask is a pure function of (seed, position): the forward kernel writes only the
dropped-out input, which the LoRA matmul reads and lets go; backward keeps the input (already kept, and
shared by the layers reading it: q, k and v) and the seed, and its kernels draw the same flags again.
Gradient checkpointing (which puts the generator back before recomputing) and CUDA graphs (whose replays
advance the generator's offset on the device) therefore draw what an eager forward would.

What differs from ``nn.Dropout``: the keep decision compares a 16-bit uniform with
``round(p * 65536)``, so the drop rate is that over 65536 (p = 0.1 drops 0.100006), and kept elements
are scaled by ``65536 / (65536 - round(p * 65536))``, which keeps the expectation exact. The stream
of random numbers is not torch's, so masks differ from ``native_dropout``'s for the same generator
state (a run is reproducible with itself, not with the unfused path).

:func:`dropped_product` goes one step further where the run plan asks for it
(tuner.plan.decide.RunPlan.seeded_product): the dropped-out input is made tile by tile inside the first
LoRA product ``dropped(x) @ A^T`` (one Triton kernel, ranks 16-128), so it is never written, and a
layer's forward launches one kernel where it launched a dropout and a matrix product. Backward adds
``dropped(grad_h @ A)`` to the input gradient in one kernel too (:func:`add_dropped_product_`), and makes
the A gradient ``grad_h^T @ dropped(x)`` the same way (:func:`dropped_product_grad`): neither the
dropped-out input nor the product is written anywhere in the step. The mask is :func:`dropped`'s.

Used by tuner.fast.lora_fused where the run plan asks for it (tuner.plan.decide.RunPlan.seeded_dropout:
every layer replayed as a CUDA graph, where the launches cost the host nothing; eagerly, with a seed
drawn on the device and a separate product, they cost the host more than the masks did in session 14;
host seeds and the fused products are measured next) and the tensor is a contiguous CUDA one
(:func:`applies`); everything else keeps ``native_dropout``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

UNIFORM_LEVELS = 1 << 16  # the keep decision's 16-bit uniforms
BLOCK = 4096  # elements per program: 512 Philox calls


def threshold(p: float) -> int:
    """The 16-bit uniforms below this are dropped."""
    return round(p * UNIFORM_LEVELS)


def keep_scale(p: float) -> float:
    """What kept elements are multiplied by: one over the exact keep rate."""
    return UNIFORM_LEVELS / (UNIFORM_LEVELS - threshold(p))


try:  # absent from CPU builds of torch and on Windows: then nothing here applies
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:

    @triton.jit
    def _key(seed_ptr, key, ON_DEVICE: tl.constexpr):
        # the Philox key: the seed drawn on the device, or the one passed from the host
        if ON_DEVICE:
            key = tl.load(seed_ptr)
        return tl.cast(key, tl.int64)

    @triton.jit
    def _group_flags(key, stream, group, below, ROWS: tl.constexpr, GROUPS: tl.constexpr):
        # the keep flags of the eight elements of each group (a [ROWS, GROUPS] tensor of element index // 8),
        # as [ROWS, GROUPS * 8]: one Philox call per group, counter = (group, stream), 32 bits per word,
        # and the 16-bit halves of its four words for the eight elements in a fixed order
        low = (group & 0xFFFFFFFF).to(tl.uint32)
        high = (group >> 32).to(tl.uint32)
        zero = low * 0
        stream = tl.cast(stream, tl.int64)  # a small value passed from the host may come as int32
        stream_low = zero + (stream & 0xFFFFFFFF).to(tl.uint32)
        stream_high = zero + (stream >> 32).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(key, low, high, stream_low, stream_high)
        words = tl.reshape(tl.join(tl.join(w0, w1), tl.join(w2, w3)), (ROWS, GROUPS * 4))
        halves = tl.reshape(tl.join(words & 0xFFFF, words >> 16), (ROWS, GROUPS * 8))
        return halves >= below

    @triton.jit
    def _block(seed_ptr, key, stream, below, BLOCK: tl.constexpr, ON_DEVICE: tl.constexpr):
        # this program's element offsets and their keep flags
        GROUPS: tl.constexpr = BLOCK // 8
        start = tl.program_id(0).to(tl.int64) * BLOCK
        group = tl.reshape(start // 8 + tl.arange(0, GROUPS).to(tl.int64), (1, GROUPS))
        keep = _group_flags(_key(seed_ptr, key, ON_DEVICE), stream, group, below, 1, GROUPS)
        return start + tl.arange(0, BLOCK), tl.reshape(keep, (BLOCK,))

    @triton.jit
    def _dropped(
        x_ptr, out_ptr, seed_ptr, key, stream, n, below, scale, BLOCK: tl.constexpr, ON_DEVICE: tl.constexpr
    ):
        offsets, keep = _block(seed_ptr, key, stream, below, BLOCK, ON_DEVICE)
        inside = offsets < n
        x = tl.load(x_ptr + offsets, mask=inside).to(tl.float32)
        tl.store(out_ptr + offsets, tl.where(keep, x * scale, 0.0).to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _add_dropped(
        out_ptr, src_ptr, seed_ptr, key, stream, n, below, scale, BLOCK: tl.constexpr, ON_DEVICE: tl.constexpr
    ):
        offsets, keep = _block(seed_ptr, key, stream, below, BLOCK, ON_DEVICE)
        inside = offsets < n
        out = tl.load(out_ptr + offsets, mask=inside).to(tl.float32)
        src = tl.load(src_ptr + offsets, mask=inside).to(tl.float32)
        total = tl.where(keep, tl.fma(src, scale, out), out)
        tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _tile_flags(key, stream, row, start, width, below, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # the keep flags of a [rows, width] tensor's tile at rows ``row``, columns from ``start`` (width and
        # start multiples of 8, so that the tile's groups are whole)
        group = (row[:, None] * width + start) // 8 + tl.arange(0, BLOCK_N // 8).to(tl.int64)[None, :]
        return _group_flags(key, stream, group, below, BLOCK_M, BLOCK_N // 8)

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
        key = _key(seed_ptr, key, ON_DEVICE)
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
        key = _key(seed_ptr, key, ON_DEVICE)
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
        keep = _tile_flags(_key(seed_ptr, key, ON_DEVICE), stream, row, start, width, below, BLOCK_M, BLOCK_N)
        inside = (row[:, None] < rows) & (column[None, :] < width)
        where = out_ptr + row[:, None] * width + column[None, :]
        out = tl.load(where, mask=inside, other=0.0).to(tl.float32)
        total = tl.where(keep, tl.fma(product, scale, out), out)
        tl.store(where, total.to(out_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _flags(out_ptr, seed_ptr, key, stream, n, below, BLOCK: tl.constexpr, ON_DEVICE: tl.constexpr):
        offsets, keep = _block(seed_ptr, key, stream, below, BLOCK, ON_DEVICE)
        tl.store(out_ptr + offsets, keep.to(tl.int8), mask=offsets < n)


def available() -> bool:
    return triton is not None


def applies(x: torch.Tensor) -> bool:
    """Whether the seeded dropout runs for ``x``: a contiguous CUDA tensor, with Triton."""
    return x.is_cuda and x.is_contiguous() and available()


class HostSeed(NamedTuple):
    """A seed drawn on the host (no kernel launched): a Philox key made from the CUDA generator's seed and a
    stream of Philox offsets reserved from that generator, as ``native_dropout`` reserves its own."""

    key: int
    stream: int


Seed = torch.Tensor | HostSeed
# Mixed into the generator's seed, so that these streams are not those of torch's own Philox kernels
# (which count offsets in another layout under the same key).
HOST_KEY_SALT = 0x2545F4914F6CDD1D
HOST_STREAM_STRIDE = 4  # offsets one draw reserves (one Philox call's worth, as torch counts them)
_KEY_BITS = (1 << 62) - 1


def draw_seed(device: torch.device) -> Seed:
    """One seed from torch's generator on ``device``, so that checkpoint recomputations (which put the
    generator back before recomputing) and CUDA graph replays draw what eager steps do. While a CUDA graph
    is being captured: a seed drawn on the device with ``torch.randint``, which every replay draws anew.
    Otherwise a :class:`HostSeed`: the generator's offset read and advanced on the host, no launch, which
    is what an eager step's host time asks for."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return torch.randint(0, 1 << 62, (1,), dtype=torch.int64, device=device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    generator = torch.cuda.default_generators[index]
    stream = generator.get_offset()
    generator.set_offset(stream + HOST_STREAM_STRIDE)
    return HostSeed((generator.initial_seed() ^ HOST_KEY_SALT) & _KEY_BITS, stream)


def _seed_arguments(seed: Seed, tensor: torch.Tensor) -> tuple:
    # a kernel's (seed pointer, key, stream): a device seed is read through the pointer, a host seed is
    # passed by value (``tensor`` then fills the pointer, never read)
    if isinstance(seed, HostSeed):
        return tensor, seed.key, seed.stream
    return seed, 0, 0


def _on_device(seed: Seed) -> bool:
    return not isinstance(seed, HostSeed)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def dropped(x: torch.Tensor, seed: Seed, p: float) -> torch.Tensor:
    """``x`` with the elements ``seed`` drops zeroed and the rest scaled by :func:`keep_scale`."""
    out = torch.empty_like(x)
    n = x.numel()
    _dropped[_grid(n)](
        x,
        out,
        *_seed_arguments(seed, x),
        n,
        threshold(p),
        keep_scale(p),
        BLOCK=BLOCK,
        ON_DEVICE=_on_device(seed),
    )
    return out


def add_dropped_(out: torch.Tensor, src: torch.Tensor, seed: Seed, p: float) -> torch.Tensor:
    """``out += dropped(src)`` in place, one pass (the input gradient through the dropout): ``out`` and
    ``src`` contiguous and alike. Returns ``out``."""
    if not (
        out.is_contiguous() and src.is_contiguous() and out.shape == src.shape and out.dtype == src.dtype
    ):
        raise ValueError("add_dropped_ needs contiguous tensors of one shape and dtype")
    n = out.numel()
    # the one fused multiply-add is the explicit tl.fma, as in PyTorch's addcmul
    _add_dropped[_grid(n)](
        out,
        src,
        *_seed_arguments(seed, out),
        n,
        threshold(p),
        keep_scale(p),
        BLOCK=BLOCK,
        ON_DEVICE=_on_device(seed),
        enable_fp_fusion=False,
    )
    return out


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
    return (*_seed_arguments(seed, tensor), *tensor.shape, threshold(p), keep_scale(p))


def _precision(dtype: torch.dtype) -> str:
    # fp32 operands multiplied in fp32 (tl.dot rounds them to tf32 by default); 16-bit operands ignore it
    return "ieee" if dtype == torch.float32 else "tf32"


def dropped_product(x: torch.Tensor, lora_A: torch.Tensor, seed: Seed, p: float) -> torch.Tensor:
    """``dropped(x, seed, p) @ lora_A.t()`` in one kernel: the dropped-out copy of ``x`` is never written
    (where :func:`product_applies`). The same mask as :func:`dropped`'s; the product rounds once, as a
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
        ON_DEVICE=_on_device(seed),
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
        ON_DEVICE=_on_device(seed),
    )
    return parts[0] if splits == 1 else parts.sum(0)


def add_dropped_product_(
    out: torch.Tensor, grad: torch.Tensor, lora_A: torch.Tensor, seed: Seed, p: float
) -> torch.Tensor:
    """``out += dropped(grad @ lora_A)`` in place, one kernel (the input gradient through the dropout and
    the first LoRA product): ``grad`` is [rows, rank], ``lora_A`` [rank, width] as
    :func:`product_applies` takes it, ``out`` contiguous [rows, width] of their dtype. The product is
    not rounded before the add, as :func:`add_dropped_` of a separate product would round it. Returns
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
        ON_DEVICE=_on_device(seed),
        enable_fp_fusion=False,
    )
    return out


def keep_mask(shape, seed: Seed, p: float, device=None) -> torch.Tensor:
    """The bool keep flags ``seed`` draws for a tensor of ``shape`` (for tests and checks) on ``device``
    (a device seed's own by default)."""
    device = seed.device if device is None else device
    out = torch.empty(shape, dtype=torch.int8, device=device)
    n = out.numel()
    _flags[_grid(n)](
        out, *_seed_arguments(seed, out), n, threshold(p), BLOCK=BLOCK, ON_DEVICE=_on_device(seed)
    )
    return out.bool()
