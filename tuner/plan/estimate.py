"""Will this run fit, and how long will it take? The run's plan (tuner.plan.decide), priced by the
memory and time model (tuner.plan.memory), with what to change when it does not fit.

The Presets tab and ``tuner estimate`` call ``estimate``; training makes the same plan, so the
estimate counts exactly the mechanisms a run will use.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from tuner.config.speed import SpeedSettings
from tuner.core import system
from tuner.core.system import Hardware
from tuner.models import shape as model_shapes
from tuner.models.shape import ModelShape
from tuner.plan.decide import RunPlan, checkpoint_plan, plan_run
from tuner.plan.memory import Estimate, price


def estimate(
    cfg,
    shape: ModelShape | None = None,
    hw: Hardware | None = None,
    dataset_tokens: int | None = None,
    *,
    settings: SpeedSettings | None = None,
    liger: bool | None = None,
    liger_installed: bool | None = None,
    upcast: bool | None = None,
    checkpointed_layers: int | None = None,
    offload: bool | None = None,
    budget_gib: float | None = None,
    graphs: bool | None = None,
    checkpoint_graphs: bool | None = None,
    embedding_on_cpu: bool | None = None,
) -> Estimate:
    """Memory (GiB) and time of one training run of ``cfg`` (a TrainConfig or a dict of its keys).

    ``dataset_tokens`` (total tokens in the training data) gives the number of steps when the
    config trains by epochs; without it only a run with ``max_steps`` gets a total time.
    The run's plan is tuner.plan.decide's for ``settings`` (default: this environment's) and
    ``budget_gib`` of memory (default: the device's); ``liger_installed`` plans for a GPU this machine
    does not have, as with Liger installed there. The other keywords pin one decision of the plan
    (what-if questions and calibration against measured rows): ``liger`` (fused cross-entropy: no
    logits), ``upcast`` (k-bit bases: unquantized weights in fp32), ``checkpointed_layers`` and
    ``offload`` (their inputs in host memory), ``graphs`` (CUDA graphs of the
    layers), ``checkpoint_graphs`` (of the checkpointed layers too), ``embedding_on_cpu`` (the input embedding's table in host memory).
    """
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    shape = shape or model_shapes.model_shape(get("model", "default"))
    hw = hw or system.hardware()
    settings = settings or SpeedSettings.from_env(os.environ)
    pinned = {}
    if upcast is not None:
        pinned["kbit_upcast"] = upcast
    if graphs is not None:
        pinned["graphs_allowed"] = graphs
    if embedding_on_cpu is not None:
        pinned["embedding_policy"] = "on" if embedding_on_cpu else "off"
    plan = plan_run(
        cfg, settings, hw, shape, budget_gib=budget_gib, liger=liger, liger_installed=liger_installed
    )
    if pinned:  # the checkpoint count is planned again with the pinned decisions
        plan = replace(plan, **pinned)
        plan = plan.with_checkpointing(*_replanned(cfg, plan, shape, hw))
    if checkpointed_layers is not None or offload is not None or checkpoint_graphs is not None:
        plan = plan.with_checkpointing(
            plan.checkpointed_layers if checkpointed_layers is None else checkpointed_layers,
            plan.offload_checkpoints if offload is None else offload,
            plan.graph_checkpointed if checkpoint_graphs is None else checkpoint_graphs,
        )
    return price_with_advice(get, plan, shape, hw, dataset_tokens)


def _replanned(cfg, plan: RunPlan, shape: ModelShape, hw: Hardware) -> tuple[int, bool, bool, bool]:
    return checkpoint_plan(cfg, plan, shape, hw, plan.budget_gib)


def price_with_advice(get, plan: RunPlan, shape: ModelShape, hw: Hardware, dataset_tokens=None) -> Estimate:
    est = price(get, plan, shape, hw, dataset_tokens)
    if not est.fits:
        est.advice = advice(est, get, hw)
    return est


def dataset_tokens(path) -> int | None:
    """Tokens in a data file, from its size at ~4 characters per token: enough for a time estimate.
    None when it cannot be read."""
    try:
        return max(1, Path(path).stat().st_size // 4)
    except (OSError, TypeError):
        return None


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``42 min`` or ``3.5 h``: as precise as an estimate is."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def advice(est: Estimate, get, hw: Hardware) -> list[str]:
    """What to change, biggest saving first, when a run will not fit."""
    tips: list[str] = []
    method = get("method", "lora")
    if est.checkpointed_layers < est.layers:
        tips.append("turn on gradient_checkpointing (activations shrink by ~15x)")
    if method == "full":
        tips.append("use method: lora (only the adapters get gradients and optimizer states)")
    if hw.device == "cuda" and method != "qlora" and est.weights_gib > 1:
        tips.append("use method: qlora (4-bit base weights, ~1/4 of the 16-bit size)")
    if est.activations_gib + est.logits_gib > 1:
        if int(get("batch_size", 1) or 1) > 1:
            tips.append("lower batch_size to 1 and raise accumulative_counts to keep the same step size")
        tips.append("lower max_length / tokens_per_step (activations and logits grow with tokens per row)")
    if method == "full" and hw.device == "cuda":
        tips.append("use deepspeed: zero3_offload (optimizer states and weights in CPU memory)")
    tips.append("or pick a smaller model")
    return tips
