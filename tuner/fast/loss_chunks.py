"""Wider chunks for Liger's fused linear cross-entropy where GPU memory has room.

Liger computes the logits a chunk of tokens at a time, each chunk's logits no larger than
``chunk_mem_const x tokens x hidden`` elements, 1 by default. For a 128k vocabulary and 4,096
tokens that is 32 chunks of 128 tokens. Each chunk runs two matmuls that read the whole LM head
(1 GB for Llama-3-8B) for only 128 rows, so they are bound by memory, not compute, and the chunk
loop launches ~100 kernels from Python. With the liger setting ``wide`` (the default), in a run where no layer is
checkpointed (memory has room: tuner.plan.estimate.checkpoint_plan left every layer's activations on the
GPU), the chunks grow until their logits take ``WIDE_LOGITS_BYTES``: 2 chunks of 2,048 tokens there.
"""

from __future__ import annotations

import functools
import inspect

from tuner.plan.memory import chunk_budget

_wide = False  # this process's current run asked for wide chunks


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
