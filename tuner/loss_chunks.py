"""Wider chunks for Liger's fused linear cross-entropy where GPU memory has room.

Liger computes the logits a chunk of tokens at a time, each chunk's logits no larger than
``chunk_mem_const x tokens x hidden`` elements, 1 by default. For a 128k vocabulary and 4,096
tokens that is 32 chunks of 128 tokens. Each chunk runs two matmuls that read the whole LM head
(1 GB for Llama-3-8B) for only 128 rows, so they are bound by memory, not compute, and the chunk
loop launches ~100 kernels from Python. With ``TUNER_LOSS_CHUNKS=wide``, in a run where no layer is
checkpointed (memory has room: tuner.estimate.checkpoint_plan left every layer's activations on the
GPU), the chunks grow until their logits take ``WIDE_LOGITS_BYTES``: 2 chunks of 2,048 tokens there.
"""

from __future__ import annotations

import functools
import inspect

# The transient logits of one wide chunk (16-bit): half a GiB, ~1% of what a roomy 8B run holds.
WIDE_LOGITS_BYTES = 2**29

_wide = False  # this process's current run asked for wide chunks


def chunk_budget(tokens: int, hidden: int, element_bytes: int) -> int:
    """Liger's ``chunk_mem_const`` that lets one chunk's logits take ``WIDE_LOGITS_BYTES``.

    >>> chunk_budget(4096, 4096, 2)  # Llama-3-8B at 4,096 tokens: 16 -> 2 chunks of 2,048 tokens
    16
    >>> chunk_budget(65536, 4096, 2)  # rows so long that Liger's own budget is already the cap
    1
    """
    return max(1, WIDE_LOGITS_BYTES // max(1, tokens * hidden * element_bytes))


def wide_chunk_logits_bytes(tokens: int, hidden: int, vocab: int, element_bytes: int = 2) -> int:
    """The logits of one wide chunk, as Liger sizes its chunks from ``chunk_budget``'s value (its
    chunk is the next power of two above tokens / ceil(vocab / (budget x hidden)), at most all tokens).

    >>> wide_chunk_logits_bytes(4096, 4096, 128256) / 2**20  # 2 chunks of 2,048 tokens
    501.0
    """
    budget = chunk_budget(tokens, hidden, element_bytes)
    chunks = -(-vocab // (budget * hidden))
    chunk = min(1 << max(0, (-(-tokens // chunks) - 1).bit_length()), tokens)
    return chunk * vocab * element_bytes


def wide_chunks_apply(cuda: bool, liger: bool, checkpointed_layers: int) -> bool:
    """Whether a run gets wide chunks (TUNER_LOSS_CHUNKS=wide, Liger's loss on a GPU, no layer
    checkpointed): what tuner.train_model decides, for the estimate to count their logits."""
    from tuner.speed import switch

    return cuda and liger and checkpointed_layers == 0 and switch("TUNER_LOSS_CHUNKS") == "wide"


def _install() -> bool:
    """Wrap Liger's functional entry point (looked up by name at every call) once per process."""
    from liger_kernel.transformers import functional

    original = functional.liger_fused_linear_cross_entropy
    if getattr(original, "tuner_wide_chunks", False):
        return True
    if "chunk_mem_const" not in inspect.signature(original).parameters:
        return False  # a Liger without the knob: its own chunks

    @functools.wraps(original)  # keeps the signature Liger's callers filter their arguments by
    def fused_linear_cross_entropy(input, weight, *args, **kwargs):
        if _wide and "chunk_mem_const" not in kwargs:
            tokens, hidden = input.shape[0], input.shape[-1]
            kwargs["chunk_mem_const"] = chunk_budget(tokens, hidden, input.element_size())
        return original(input, weight, *args, **kwargs)

    fused_linear_cross_entropy.tuner_wide_chunks = True
    functional.liger_fused_linear_cross_entropy = fused_linear_cross_entropy
    return True


def use_wide_chunks(wanted: bool) -> bool:
    """Set this process's runs to wide chunks (``wanted``) or Liger's own; True when wide."""
    global _wide
    _wide = bool(wanted) and _install()
    return _wide
