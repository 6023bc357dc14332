"""Where a training step makes the host wait for the GPU: PyTorch's sync debug mode over the timed
steps, each synchronizing op counted by the Python frames that asked for it.

A device sync is cheap in itself, but after it the GPU idles until the host has launched the next
kernel: every Python line the host runs between a sync and its next launch is GPU time lost. The
profiler shows the idle gaps (``--profile-cuda``); this shows who synchronized.
"""

from __future__ import annotations

import collections
import traceback
import warnings
from pathlib import Path

SYNC_WARNING = "called a synchronizing CUDA operation"
REPO = str(Path(__file__).resolve().parents[2]) + "/"  # the repository root (this file is bench/probes/)


def _short(filename: str) -> str:
    """A file by its repository path (tuner/..., bench/...) or its installed package path."""
    return filename.removeprefix(REPO).split("site-packages/")[-1]


def _call_site(stack: list[traceback.FrameSummary], torch_dir: str, depth: int = 4) -> str:
    """The innermost frames outside torch and this module, innermost first."""
    frames = [
        f
        for f in reversed(stack)
        if not f.filename.startswith(torch_dir)
        and "sync_trace" not in f.filename
        and "/warnings.py" not in f.filename
    ]
    return " < ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in frames[:depth])


class SyncTracer:
    """Counts synchronizing CUDA operations by call site between construction and ``disable()``
    (the enable/disable interface of cProfile, as the train_speed --profile option expects)."""

    def __init__(self):
        import torch

        self.sites: collections.Counter[str] = collections.Counter()
        # torch's own package folder: a path test like "/torch/" would also hide transformers and
        # accelerate where the environment itself lives under a folder named torch
        self.torch_dir = str(Path(torch.__file__).resolve().parent) + "/"
        self._show = warnings.showwarning
        self._filters = list(warnings.filters)
        warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")
        warnings.showwarning = self._record
        torch.cuda.set_sync_debug_mode("warn")
        self.active = True

    def _record(self, message, category, filename, lineno, file=None, line=None):
        if SYNC_WARNING in str(message):
            self.sites[_call_site(traceback.extract_stack()[:-1], self.torch_dir)] += 1
        else:
            self._show(message, category, filename, lineno, file, line)

    def disable(self) -> None:
        import torch

        if self.active:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = self._show
            warnings.filters[:] = self._filters
            self.active = False

    def report(self, label: str, steps: int) -> str:
        total = sum(self.sites.values())
        lines = [
            f"{label}: synchronizing CUDA operations over {steps} timed steps: {total / max(steps, 1):.1f} per step"
        ]
        for site, count in self.sites.most_common():
            lines.append(f"{count / max(steps, 1):6.1f}/step  {site or '(no Python frame outside torch)'}")
        return "\n".join(lines) + "\n"
