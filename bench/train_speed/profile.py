"""Where a row's timed steps spend their time: cProfile (host, main thread), torch.profiler (CUDA
kernels, the GPU's busy share and its idle gaps) or PyTorch's sync debug mode (who made the host wait).

Each profiler starts at the last warm-up step's end and stops at the last timed step's end (the step
clock drives them, ``measure.StepClock``), and writes ``<folder>/<row label>.txt``.
"""

from __future__ import annotations

import time
from pathlib import Path


class _TorchProfiler:
    """torch.profiler over the timed steps, with cProfile's enable/disable interface."""

    def __init__(self):
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        # No with_stack: on the device it slowed the host by ~40% (0.428 s profiled against 0.311 s) and
        # left FunctionEvent.stack empty, so the idle gaps came out larger than in a real step.
        self.profile = torch.profiler.profile(activities=activities)
        self.started = time.perf_counter()
        self.wall_s = None
        self.profile.__enter__()

    def disable(self) -> None:
        if self.wall_s is None:
            self.wall_s = time.perf_counter() - self.started
            self.profile.__exit__(None, None, None)


def start_profiler(kind):
    """``kind``: "syncs" (sync debug mode), true (torch.profiler) or false (cProfile)."""
    if kind == "syncs":
        from bench.probes.sync_trace import SyncTracer

        return SyncTracer()
    if kind:
        return _TorchProfiler()
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def write_cuda_profile(profiler: _TorchProfiler, path: Path, label: str, steps: int, top: int) -> None:
    """Kernels by GPU time, and how much of the wall clock the GPU was busy at all: what is left
    idle is host overhead (Python, launches, syncs) that no faster kernel can win back."""
    events = profiler.profile.key_averages()
    busy_us = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    timed, steps = steps, max(steps, 1)
    head = (
        f"{label}: {timed} timed steps under torch.profiler\n"
        f"wall {profiler.wall_s / steps:.4f} s/step, GPU kernels {busy_us / 1e6 / steps:.4f} s/step "
        f"({100 * busy_us / 1e6 / profiler.wall_s:.1f}% busy; profiler overhead included)\n\n"
    )
    by_gpu = events.table(sort_by="self_device_time_total", row_limit=top, max_name_column_width=90)
    by_host = events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=90)
    gaps = idle_gaps(profiler.profile.events(), steps)
    path.write_text(head + "By GPU time\n" + by_gpu + "\n\nBy host time\n" + by_host + "\n\n" + gaps + "\n")


def _caller(event) -> str:
    """The innermost frames of an op's Python stack outside torch itself (where tuner, transformers,
    peft, Liger or the Trainer asked for it), where the profiler recorded stacks ("" otherwise)."""
    frames = [f for f in (getattr(event, "stack", None) or []) if "torch/" not in f and "<built-in" not in f]
    return " < ".join(f.split("site-packages/")[-1] for f in frames[:3])


def idle_gaps(events, steps: int, min_us: float = 200.0, top: int = 12) -> str:
    """Where the GPU waits for the host: the stretches of at least ``min_us`` with no kernel, memcpy or
    memset running, the largest first, each with the kernels either side and the host ops that
    started inside it (longest first, with their Python callers)."""
    device = sorted(
        (e.time_range.start, e.time_range.end, e.name) for e in events if e.device_type.name == "CUDA"
    )
    if not device:
        return "GPU idle gaps: no device events"
    gaps, busy_until, last = [], device[0][1], device[0][2]
    for start, end, name in device[1:]:
        if start - busy_until >= min_us:
            gaps.append((start - busy_until, busy_until, start, last, name))
        if end >= busy_until:
            busy_until, last = end, name
    host = [e for e in events if e.device_type.name == "CPU"]
    total = sum(g[0] for g in gaps)
    lines = [
        f"GPU idle gaps >= {min_us:.0f} us: {len(gaps) / steps:.1f} per step, {total / 1e3 / steps:.1f} ms per step",
        "",
    ]
    for length, begin, end, before, after in sorted(gaps, reverse=True)[:top]:
        lines.append(f"{length / 1e3:.2f} ms idle, after {before[:60]!r}, before {after[:60]!r}")
        inside = [e for e in host if begin <= e.time_range.start < end]
        inside.sort(key=lambda e: min(e.time_range.end, end) - e.time_range.start, reverse=True)
        for e in inside[:4]:
            spent = (min(e.time_range.end, end) - e.time_range.start) / 1e3
            lines.append(f"    {spent:6.2f} ms {e.name[:50]:50s} {_caller(e)[:200]}")
    return "\n".join(lines)


def write_profile(profiler, folder: Path, label: str, steps: int, top: int = 45) -> Path:
    """The timed steps' profile. cProfile (main thread): top functions by own and cumulative time.
    The autograd engine runs CUDA backward passes on its own thread, which cProfile does not follow:
    there the backward (checkpoint recomputation included) shows as ``run_backward`` as a whole.
    torch.profiler (--profile-cuda): see write_cuda_profile."""
    import io
    import pstats

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label}.txt"
    if isinstance(profiler, _TorchProfiler):
        write_cuda_profile(profiler, path, label, steps, top)
        return path
    if hasattr(profiler, "sites"):  # --profile-syncs
        path.write_text(profiler.report(label, steps))
        return path
    text = io.StringIO()
    text.write(f"{label}: {steps} timed steps, main thread (cProfile inflates Python-heavy code)\n")
    for key in ("tottime", "cumulative"):
        stats = pstats.Stats(profiler, stream=text)
        stats.strip_dirs().sort_stats(key).print_stats(top)
    path.write_text(text.getvalue())
    return path
