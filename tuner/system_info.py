"""What this machine has: GPU 0 or the CPU and its memory, and the versions the environment panel shows."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

GIB = 1024**3


@dataclass
class Hardware:
    device: str  # "cuda" or "cpu"
    name: str
    memory_gib: float  # total VRAM of GPU 0, or total RAM on a CPU
    cpu_count: int


def hardware() -> Hardware:
    """GPU 0 when CUDA is available, else the CPU and its RAM."""
    cpu_count = os.cpu_count() or 1
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return Hardware("cuda", props.name, props.total_memory / GIB, cpu_count)
    except Exception:  # a broken CUDA install must not break the estimate
        pass
    return Hardware("cpu", "CPU", _ram_gib(), cpu_count)


def _ram_gib() -> float:
    try:
        import psutil

        return psutil.virtual_memory().total / GIB
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def environment() -> dict:
    """What the environment panel shows: versions, device, memory, optional accelerators."""
    info: dict = {}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    except ImportError:
        info["torch"] = None
        info["cuda"] = None
    hw = hardware()
    info["device"] = hw.device
    info["gpu"] = hw.name if hw.device == "cuda" else None
    info["memory_gib"] = round(hw.memory_gib, 1)
    info["cpu_count"] = hw.cpu_count
    for pkg in ("transformers", "peft", "bitsandbytes", "flash_attn", "deepspeed"):
        info[pkg] = _version(pkg)
    return info


def _version(pkg: str) -> str | None:
    if importlib.util.find_spec(pkg) is None:
        return None
    from importlib import metadata

    try:
        return metadata.version(pkg.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "installed"
