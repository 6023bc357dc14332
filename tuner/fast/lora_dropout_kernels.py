"""LoRA dropout without a stored mask or dropped-out copy: Triton kernels that draw the mask on the fly.

Why: with dropout on, tuner.fast.lora_fused keeps, for every adapted linear, a dropped-out copy of its input
and a bool mask of that size for backward. q/k/v and gate/up read one input, yet each keeps its own:
~0.43 GiB per Llama-3-8B decoder layer at 4096 tokens, ~14 GiB over 32 layers that are not
checkpointed, and four full-width elementwise kernels per linear per step (the dropout, the masked
gradient, and the copies' traffic). Here the mask is a pure function of a per-call seed (a one-element
device tensor drawn from PyTorch's generator, so CUDA graphs and checkpoint recomputation replay it)
and of the element's index, ``keep = rand(seed, t * in + c) >= p``, and each kernel draws the elements
it needs:

- forward: ``h = (x * keep / (1 - p)) @ A^T`` reading x directly (:func:`masked_x_at`);
- backward: ``grad_A = grad_h^T @ (x * keep / (1 - p))`` (:func:`masked_gradient_a`), and
  ``grad_x += (grad_h @ A) * keep / (1 - p)`` added into the base layer's input gradient
  (:func:`add_masked_grad_x`).

Only x (shared by the linears reading it), h, the LoRA weights and the seed are kept. The mask differs
from ``torch.native_dropout``'s draw (another random stream, the same distribution), so results match
peft's in distribution, not bit for bit; within a step forward and backward use the same mask.

Where it applies: a contiguous 2-D input of at most 2^31 elements, a LoRA rank of at most 256, and Triton
(CUDA; or its interpreter, ``TRITON_INTERPRET=1``, which the CPU tests use). Off by default
(TUNER_LORA_DROPOUT_KERNEL) until measured on a GPU.
"""

from __future__ import annotations

import functools

import torch

MAX_RANK = 256
MAX_ELEMENTS = 2**31 - 1  # element indices are int32 in the kernels


@functools.cache
def _kernels():
    """The three Triton kernels and triton.cdiv, or None where Triton is not installed."""
    try:
        import triton

        from tuner.fast import lora_dropout_triton as kernels
    except ImportError:
        return None
    return (
        kernels.masked_x_at_kernel,
        kernels.masked_gradient_a_kernel,
        kernels.add_masked_grad_x_kernel,
        triton.cdiv,
    )


def _rank_block(rank: int) -> int:
    return max(16, 1 << (rank - 1).bit_length())  # tl.dot needs each dimension >= 16


def kernels_apply(x2: torch.Tensor, lora_A: torch.Tensor) -> bool:
    """Whether the kernels can compute this layer's dropout (see the module docstring)."""
    from tuner.config.speed import switch

    interpreted = x2.device.type == "cpu" and _interpreting()
    return (
        (x2.is_cuda or interpreted)
        and x2.dim() == 2
        and x2.is_contiguous()
        and x2.numel() <= MAX_ELEMENTS
        and lora_A.shape[0] <= MAX_RANK
        and switch("TUNER_LORA_DROPOUT_KERNEL") == "on"
        and _kernels() is not None
    )


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def new_seed(device: torch.device) -> torch.Tensor:
    """A one-element seed tensor on ``device``, drawn from PyTorch's generator (so a CUDA graph replay
    draws a new one and a checkpoint recomputation, which restores the generator, the same one)."""
    return torch.randint(0, 2**31 - 1, (1,), device=device, dtype=torch.int64)


def masked_x_at(x2: torch.Tensor, lora_A: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """``(x2 * keep / (1 - p)) @ lora_A^T`` in x2's dtype, x2: (T, in), lora_A: (r, in) in x2's dtype."""
    kernel, _, _, cdiv = _kernels()
    tokens, width = x2.shape
    rank = lora_A.shape[0]
    h = x2.new_empty(tokens, rank)
    block_t, block_k = 64, 64
    kernel[(cdiv(tokens, block_t),)](
        x2, lora_A.contiguous(), h, seed, tokens, width, rank, p, 1.0 / (1.0 - p),
        BLOCK_T=block_t, BLOCK_R=_rank_block(rank), BLOCK_K=block_k,
    )  # fmt: skip
    return h


def masked_gradient_a(grad_h: torch.Tensor, x2: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """``grad_h^T @ (x2 * keep / (1 - p))`` in fp32: (r, in). Split over the tokens into fp32 partial
    sums added up afterwards (deterministic, unlike atomics), so a few column blocks still fill the GPU."""
    _, kernel, _, cdiv = _kernels()
    tokens, width = x2.shape
    rank = grad_h.shape[1]
    block_t, block_k = 64, 64
    splits = max(1, min(16, cdiv(tokens, 512)))
    rows_per_split = cdiv(cdiv(tokens, splits), block_t) * block_t
    splits = cdiv(tokens, rows_per_split)
    parts = torch.empty(splits, rank, width, device=x2.device, dtype=torch.float32)
    kernel[(cdiv(width, block_k), splits)](
        grad_h.contiguous(), x2, parts, seed, tokens, width, rank, rows_per_split, p, 1.0 / (1.0 - p),
        BLOCK_T=block_t, BLOCK_R=_rank_block(rank), BLOCK_K=block_k,
    )  # fmt: skip
    return parts.sum(0) if splits > 1 else parts[0]


def add_masked_grad_x(
    grad_x: torch.Tensor, grad_h: torch.Tensor, lora_A: torch.Tensor, seed: torch.Tensor, p: float
) -> torch.Tensor:
    """``grad_x += (grad_h @ lora_A) * keep / (1 - p)`` in place; grad_x: (T, in) contiguous."""
    _, _, kernel, cdiv = _kernels()
    tokens, width = grad_x.shape
    rank = lora_A.shape[0]
    block_t, block_k = 64, 64
    kernel[(cdiv(tokens, block_t), cdiv(width, block_k))](
        grad_x, grad_h.contiguous(), lora_A.contiguous(), seed, tokens, width, rank, p, 1.0 / (1.0 - p),
        BLOCK_T=block_t, BLOCK_R=_rank_block(rank), BLOCK_K=block_k,
    )  # fmt: skip
    return grad_x


def drawn_mask(shape: tuple[int, int], seed: torch.Tensor, p: float, device) -> torch.Tensor:
    """The bool mask the kernels draw for an input of ``shape`` (tests and debugging: the kernels
    themselves never store it). Derived by running the forward kernel on one-hot columns."""
    tokens, width = shape
    keep = torch.empty(tokens, width, dtype=torch.bool, device=device)
    eye = torch.eye(16, width, device=device, dtype=torch.float32)  # 16 one-hot rows of A at a time
    ones = torch.ones(tokens, width, device=device, dtype=torch.float32)
    for start in range(0, width, 16):
        rows = eye.roll(start, dims=1)[: min(16, width - start)]
        keep[:, start : start + rows.shape[0]] = masked_x_at(ones, rows, seed, p) != 0
    return keep
