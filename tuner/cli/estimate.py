"""estimate verb: ``python -m tuner estimate CONFIG [--set KEY=VALUE] [--gpu-gib N [--gpu NAME]]``.

The Presets tab's memory and time estimate from the command line, with the longest single sample the
GPU fits; ``--gpu-gib`` plans for a card this machine does not have (a classroom's, a cloud GPU's).
Exit status: 0 when the run fits, 1 when it does not (what to change is listed), 2 when the config or
its model cannot be read (printed as ``error: ...``).
"""

from __future__ import annotations

import argparse
import os

from tuner.cli.options import add_set_option
from tuner.core import system
from tuner.models import shape as model_shapes


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="will a config fit the GPU, how long will it take, how long may one sample be",
        description="Estimate a config's GPU memory and time on this machine's GPU (or --gpu-gib N), "
        "and the longest single sample it fits; exit 1 when it will not fit.",
    )
    parser.add_argument("file", metavar="CONFIG", help="a .yaml config file or a preset name")
    add_set_option(parser, "--set max_length=8192")
    parser.add_argument(
        "--gpu-gib",
        type=float,
        metavar="N",
        help="plan for a GPU with N GiB of memory instead of this machine's",
    )
    parser.add_argument(
        "--gpu",
        metavar="NAME",
        help="with --gpu-gib: the GPU's name for the time estimate (H100, A100, 4090, T4...)",
    )
    parser.set_defaults(func=estimate_cmd)


def _activations_label(est) -> str:
    if est.checkpointed_layers:
        where = ", their inputs in CPU memory" if est.offloaded else ""
        return (
            f"activations (gradient checkpointing on {est.checkpointed_layers} of {est.layers} layers{where})"
        )
    if est.graphs:
        return "activations (every layer kept, no recomputation; layers replayed as CUDA graphs)"
    return "activations"


def estimate_cmd(args: argparse.Namespace) -> int:
    from tuner.config.files import load_config
    from tuner.config.presets import find_preset
    from tuner.core.errors import TunerError
    from tuner.core.system import ALLOCATOR_TIP, Hardware
    from tuner.core.workspace import resolve_path
    from tuner.plan.estimate import dataset_tokens, estimate, format_duration
    from tuner.plan.long_rows import longest_sample_report
    from tuner.plan.memory import GPU_DEFAULT_PEAK, GPU_PEAK_FLOPS, gpu_class

    if args.gpu and args.gpu_gib is None:
        raise TunerError("--gpu NAME goes with --gpu-gib N (the GPU's memory); add --gpu-gib")
    if args.gpu_gib is not None and not args.gpu_gib > 0:
        raise TunerError(f"--gpu-gib {args.gpu_gib:g}: give the GPU's memory in GiB, e.g. 24")
    config = load_config(find_preset(args.file), overrides=args.overrides)
    if args.gpu_gib is None:
        hw = system.hardware()
    else:
        hw = Hardware("cuda", args.gpu or f"a {args.gpu_gib:g} GiB GPU", args.gpu_gib, os.cpu_count() or 1)
    shape = model_shapes.model_shape(config.model)
    # A GPU planned for is one with the GPU extras installed (Liger), whatever this machine has.
    kernels = {"liger_installed": True} if args.gpu_gib is not None else {}
    data_tokens = dataset_tokens(resolve_path(config.data_path))
    est = estimate(config, shape, hw, dataset_tokens=data_tokens, **kernels)
    where = f"{hw.name}, {hw.memory_gib:.1f} GiB" + (" of RAM" if hw.device == "cpu" else "")
    verdict = "Fits" if est.fits else "Won't fit"
    lines = [
        f"{config.name}: {config.method} on {config.model} ({where})",
        f"{verdict}: about {est.total_gib:.1f} GiB needed of {est.available_gib:.1f} GiB.",
        f"Plan: {est.plan}.",
    ]
    label = "base weights" + (" (the input embedding waits in CPU memory)" if est.embedding_on_cpu else "")
    parts = [
        (label, est.weights_gib),
        (f"trainable parameters ({est.trainable_params:,}) + gradients + optimizer", est.trainable_gib),
        (_activations_label(est), est.activations_gib),
        ("logits", est.logits_gib),
        ("runtime overhead", est.overhead_gib),
    ]
    width = max(len(name) for name, _ in parts)
    lines += [f"  {name:<{width}}  {gib:6.2f} GiB" for name, gib in parts]
    lines.append(
        f"One optimizer step = {est.tokens_per_step:,} tokens ≈ {format_duration(est.seconds_per_step)}"
        f" (about {est.tokens_per_second:,.0f} tokens/s)."
    )
    if hw.device == "cuda" and gpu_class(hw.name) is None:
        lines.append(
            f"  The time assumes a GPU of about {GPU_DEFAULT_PEAK / 1e12:.0f} TFLOP/s in bf16; "
            f"--gpu-gib N --gpu NAME prices a known one ({', '.join(GPU_PEAK_FLOPS)})."
        )
    if est.total_seconds:
        lines.append(f"{est.total_steps} steps ≈ {format_duration(est.total_seconds)}.")
    report = longest_sample_report(config, shape, hw, **kernels) if hw.device == "cuda" else None
    if report and report.tokens:
        lines.append(
            f"Longest single sample on this GPU: about {report.tokens:,} tokens (max_length, one sample per step)."
        )
        if report.past_model_context:
            lines.append(
                f"  The model itself was made for rows of up to {report.past_model_context:,} tokens "
                "(max_position_embeddings)."
            )
        if report.allocator_tip:
            lines.append(f"  Tip: {ALLOCATOR_TIP}.")
    if est.advice:
        lines.append("What to change:")
        lines += [f"  - {tip}" for tip in est.advice]
    lines.append("A first-order estimate (tuner/plan/estimate.py): real use varies by about 15%.")
    print("\n".join(lines))
    return 0 if est.fits else 1
