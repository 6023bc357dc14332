"""What this machine has: its GPU (under torchrun the rank's own) or the CPU and its memory, and the versions the environment panel shows."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from tuner.core.errors import TunerError

GIB = 1024**3

# The CUDA context and cuBLAS workspaces: device memory in use that is neither free nor PyTorch's.
CUDA_CONTEXT_GIB = 0.6
GPU_MEMORY_CAP = "TUNER_GPU_MEMORY_GIB"


def gpu_memory_cap_gib() -> float | None:
    """TUNER_GPU_MEMORY_GIB: use at most this much of the GPU's memory (a GPU shared with others, or
    to see how a run fits a smaller card); None when unset."""
    text = os.environ.get(GPU_MEMORY_CAP, "").strip()
    return parse_gpu_memory_cap(text) if text else None


def parse_gpu_memory_cap(text: str) -> float:
    """The GiB a TUNER_GPU_MEMORY_GIB value allows; more than the CUDA context, or TunerError."""
    try:
        cap = float(text)
    except ValueError:
        cap = 0.0
    if not cap > CUDA_CONTEXT_GIB:
        raise TunerError(f"{GPU_MEMORY_CAP}={text!r}: give the GiB of GPU memory a run may use, e.g. 80")
    return cap


def use_local_gpu() -> int | None:
    """Under torchrun every process trains on the GPU of its LOCAL_RANK: make that GPU the current one
    before anything is put on "cuda" (a 4-bit base goes to the current GPU, and without this every rank
    would load onto GPU 0). Returns the GPU's index, or None without CUDA or outside torchrun."""
    rank = os.environ.get("LOCAL_RANK", "").strip()
    if not rank.isdigit():
        return None
    import torch

    if not torch.cuda.is_available() or int(rank) >= torch.cuda.device_count():
        return None
    torch.cuda.set_device(int(rank))
    return int(rank)


def limit_gpu_memory() -> float | None:
    """Hold PyTorch's allocator to TUNER_GPU_MEMORY_GIB (less the CUDA context, which it does not
    count) on the current GPU; returns the cap in GiB, or None when there is none or no GPU."""
    cap = gpu_memory_cap_gib()
    if cap is None:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    torch.cuda.set_per_process_memory_fraction(min(1.0, (cap - CUDA_CONTEXT_GIB) / total))
    return cap


# Measured on an H200 held to 80 GiB, Llama-3-8B QLoRA on one 131,072-token row, every layer's input
# offloaded: PyTorch's default allocator used 45.2 GiB of the device, expandable segments 38.5 (same
# speed; bench/results/2026-12-01-h200-long-context-*.json). Its large, ever-changing blocks (a 1 GiB
# input on its way to the host, the recomputed layer's 3.5 GiB MLP tensors) fragment the default's
# fixed segments.
ALLOCATOR_TIP = (
    "start with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to fit longer rows: on rows this long "
    "PyTorch's default allocator fragments (17% more GPU memory at 131k tokens)"
)


def expandable_segments_on() -> bool:
    """Whether PyTorch's CUDA allocator was told to use expandable segments (its two variables)."""
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        if "expandable_segments:true" in os.environ.get(name, "").replace(" ", "").lower():
            return True
    return False


@dataclass
class Hardware:
    device: str  # "cuda" or "cpu"
    name: str
    memory_gib: float  # total VRAM of the current GPU (GPU 0 outside torchrun), or total RAM on a CPU
    cpu_count: int


def hardware() -> Hardware:
    """The current GPU (GPU 0, or under torchrun the rank's GPU once use_local_gpu ran) when CUDA is available (its memory held to TUNER_GPU_MEMORY_GIB), else the CPU and its RAM."""
    cpu_count = os.cpu_count() or 1
    cap = gpu_memory_cap_gib()  # a bad value is the user's to fix, not a reason to report a CPU
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())  # torchrun: this rank's
            memory = props.total_memory / GIB
            return Hardware("cuda", props.name, memory if cap is None else min(memory, cap), cpu_count)
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
    cap = gpu_memory_cap_gib()
    info["memory_capped"] = hw.device == "cuda" and cap is not None and hw.memory_gib == cap
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


def world_size() -> int:
    """Processes in this run (torchrun sets WORLD_SIZE; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's rank under torchrun (0 otherwise); rank 0 writes the run folder's files."""
    return int(os.environ.get("RANK", "0") or 0)


def gpu_memory_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)
