"""How long may one sample be? The longest single row a GPU fits with a config's other settings, by
the calibrated memory estimate (tuner.plan.estimate), and what goes with such rows: the model's own context,
and the allocator setting that keeps them from fragmenting GPU memory.

The estimate's functions are looked up on tuner.plan.estimate at call time, so that one patched there (a
test's model shape or hardware) is the one used here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuner.core import system
from tuner.core.system import Hardware, expandable_segments_on
from tuner.models import shape as model_shapes
from tuner.models.shape import ModelShape
from tuner.plan import estimate as estimate_module

# longest_sample's answer: a multiple of this many tokens (max_length is set in thousands), at most a
# million (past that a step takes many minutes even on an H200).
LONGEST_STEP = 1024
LONGEST_CEILING = 1 << 20


def one_sample(cfg: dict, tokens: int) -> dict:
    """``cfg`` (a dict of TrainConfig keys) training one sample of ``tokens`` tokens per step."""
    return {**cfg, "max_length": tokens, "tokens_per_step": None, "batch_size": 1}


def longest_sample(
    cfg,
    shape: ModelShape | None = None,
    hw: Hardware | None = None,
    **kernels,
) -> int:
    """The longest single sample (``max_length`` tokens, one row per step, no packing) that the
    estimate fits on ``hw`` with ``cfg``'s other settings: a multiple of LONGEST_STEP, at most
    LONGEST_CEILING; 0 where not even LONGEST_STEP tokens fit. ``kernels``: ``liger``, ``upcast`` or
    ``liger_installed`` as for ``estimate`` (default: what training does here; without Liger the
    logits grow with the row).

    Memory grows with the tokens of a step whatever the checkpoint plan (which gets more layers
    checkpointed, then offloaded, as rows grow), so the answer is a bisection over ``fits``. On an
    H200 held to 80 GiB a 131,072-token Llama-3-8B QLoRA row used 38.5 GiB of the device with
    expandable segments where the estimate says 36.7 (peak allocated 34.6, estimate 34.1), and 45.2 GiB
    with PyTorch's default allocator, which fragments on rows that long (bench/results/2026-12-01-h200-long-context-*.json).
    """
    base = dict(cfg) if isinstance(cfg, dict) else cfg.to_dict()
    shape = shape or model_shapes.model_shape(base.get("model") or "default")
    hw = hw or system.hardware()

    def fits(blocks: int) -> bool:
        return estimate_module.estimate(one_sample(base, blocks * LONGEST_STEP), shape, hw, **kernels).fits

    low, high = 1, LONGEST_CEILING // LONGEST_STEP  # in blocks: low fits, high does not (checked)
    if not fits(low):
        return 0
    if fits(high):
        return high * LONGEST_STEP
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low * LONGEST_STEP


@dataclass
class LongestSample:
    """What the estimate tells about long rows: ``tokens`` (longest_sample), the model's own context
    where the rows go past it, and whether to advise expandable segments (rows that long offload their
    layers' inputs, where PyTorch's default allocator fragments; system_info.ALLOCATOR_TIP)."""

    tokens: int
    past_model_context: int | None
    allocator_tip: bool


def longest_sample_report(cfg, shape: ModelShape, hw: Hardware, **kernels) -> LongestSample:
    """longest_sample with what goes with it (LongestSample); ``kernels`` as for longest_sample."""
    base = dict(cfg) if isinstance(cfg, dict) else cfg.to_dict()
    tokens = longest_sample(base, shape, hw, **kernels)
    if not tokens:
        return LongestSample(0, None, False)
    past = shape.context if shape.context and tokens > shape.context else None
    offloaded = estimate_module.estimate(one_sample(base, tokens), shape, hw, **kernels).offloaded
    return LongestSample(tokens, past, offloaded and not expandable_segments_on())
