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

tuner.fast.dropout_products goes one step further: the same masks made inside the LoRA products.

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
    def philox_key(seed_ptr, key, ON_DEVICE: tl.constexpr):
        # the Philox key: the seed drawn on the device, or the one passed from the host
        if ON_DEVICE:
            key = tl.load(seed_ptr)
        return tl.cast(key, tl.int64)

    @triton.jit
    def group_flags(key, stream, group, below, ROWS: tl.constexpr, GROUPS: tl.constexpr):
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
        keep = group_flags(philox_key(seed_ptr, key, ON_DEVICE), stream, group, below, 1, GROUPS)
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


def seed_arguments(seed: Seed, tensor: torch.Tensor) -> tuple:
    """A kernel's (seed pointer, key, stream) for ``seed``: a device seed is read through the pointer, a
    host seed is passed by value (``tensor`` then fills the pointer, never read). With :func:`on_device`,
    :func:`philox_key` and :func:`group_flags`, what tuner.fast.dropout_products' kernels share."""
    if isinstance(seed, HostSeed):
        return tensor, seed.key, seed.stream
    return seed, 0, 0


def on_device(seed: Seed) -> bool:
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
        *seed_arguments(seed, x),
        n,
        threshold(p),
        keep_scale(p),
        BLOCK=BLOCK,
        ON_DEVICE=on_device(seed),
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
        *seed_arguments(seed, out),
        n,
        threshold(p),
        keep_scale(p),
        BLOCK=BLOCK,
        ON_DEVICE=on_device(seed),
        enable_fp_fusion=False,
    )
    return out


def keep_mask(shape, seed: Seed, p: float, device=None) -> torch.Tensor:
    """The bool keep flags ``seed`` draws for a tensor of ``shape`` (for tests and checks) on ``device``
    (a device seed's own by default)."""
    device = seed.device if device is None else device
    out = torch.empty(shape, dtype=torch.int8, device=device)
    n = out.numel()
    _flags[_grid(n)](out, *seed_arguments(seed, out), n, threshold(p), BLOCK=BLOCK, ON_DEVICE=on_device(seed))
    return out.bool()
