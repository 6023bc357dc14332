"""A bitsandbytes 4-bit weight dequantized with bitsandbytes' own CUDA kernels, called directly.

Why: a checkpointed QLoRA step dequantizes every 4-bit weight three times (forward, recomputation,
backward): 672 calls a step for a 7B Llama. Through ``bitsandbytes.functional.dequantize_4bit`` each
call goes through its argument checks, ``dequantize_blockwise``'s for the double-quantized absmax, two
torch.library dispatches into Python kernels that each switch the current device, allocate and make a
ctypes call, and the offset's add: about 150 us of host time per call under torch.profiler on the
H200's host, for three kernels that run 38 us together. On the small-card step the GPU waits on the
host, so this is time the step loses (bench/results/profiles/2026-12-04-session12-card8-tuner.txt:
kernels 0.41 s of a 0.45-0.53 s step).

How: the same three kernels (the absmax's 8-bit blockwise dequantization, the offset's add, the 4-bit
dequantization), launched with the arguments read from the quant state, on the current stream: same
inputs, same kernels, so the weight is bit for bit bitsandbytes' (tests/gpu/test_gpu_kbit_dequant.py).

Where the layout is not the plain one the kernels take, bitsandbytes' function runs instead: another
device than the current one, a weight packed transposed (``shape[0] == 1``) or for its CPU kernel, a
dtype or quant type those kernels do not cover, a weight of 2**31 elements or more (the kernels count
in 32 bits), or a bitsandbytes without these C functions.
"""

from __future__ import annotations

import ctypes
import functools

import torch

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@functools.cache
def _library():
    """bitsandbytes' native library when it was built with CUDA, else None."""
    try:
        from bitsandbytes.cextension import lib
    except ImportError:
        return None
    return lib if getattr(lib, "compiled_with_cuda", False) else None


@functools.cache
def _kernel(name: str):
    lib = _library()
    function = None if lib is None else getattr(getattr(lib, "_lib", lib), name, None)
    return function


def _ptr(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def _direct_kernels(weight: torch.Tensor, state):
    """(4-bit kernel, absmax kernel or None) where the direct path applies, else None."""
    if weight.device.type != "cuda" or weight.device.index != torch.cuda.current_device():
        return None
    if weight.shape[0] == 1 or getattr(state, "packing_format_for_cpu", False) or weight.dtype != torch.uint8:
        return None
    if not weight.is_contiguous() or state.absmax.device != weight.device:
        return None
    if weight.numel() * 2 >= 2**31:  # the kernels count elements in 32 bits
        return None
    dtype_name = _DTYPE_NAMES.get(state.dtype)
    if dtype_name is None or state.quant_type not in ("nf4", "fp4"):
        return None
    four_bit = _kernel(f"cdequantize_blockwise_{dtype_name}_{state.quant_type}")
    if four_bit is None:
        return None
    if not state.nested:
        return four_bit, None
    nested = state.state2
    absmax_kernel = _kernel(f"cdequantize_blockwise_{_DTYPE_NAMES.get(nested.dtype, '')}")
    if absmax_kernel is None or state.absmax.dtype != torch.uint8:
        return None
    if nested.code.device != weight.device or nested.absmax.device != weight.device:
        return None  # bitsandbytes moves them; the kernels would read host memory
    return four_bit, absmax_kernel


def dequantize_4bit(weight: torch.Tensor, state) -> torch.Tensor:
    """The 16/32-bit weight (``state.shape``, ``state.dtype``) of a bitsandbytes 4-bit ``weight``."""
    kernels = _direct_kernels(weight, state)
    if kernels is None:
        from bitsandbytes.functional import dequantize_4bit as dequantize

        return dequantize(weight, state)
    four_bit, absmax_kernel = kernels
    stream = ctypes.c_void_p(torch._C._cuda_getCurrentRawStream(weight.device.index))
    absmax = state.absmax
    if absmax_kernel is not None:
        nested = state.state2
        codes = absmax
        absmax = torch.empty(codes.shape, dtype=nested.dtype, device=weight.device)
        absmax_kernel(
            _ptr(nested.code),
            _ptr(codes),
            _ptr(nested.absmax),
            _ptr(absmax),
            ctypes.c_int32(nested.blocksize),
            ctypes.c_int32(codes.numel()),
            stream,
        )
        absmax += state.offset
        if absmax.dtype != torch.float32:
            absmax = absmax.float()
    out = torch.empty(state.shape, dtype=state.dtype, device=weight.device)
    four_bit(
        None,
        _ptr(weight),
        _ptr(absmax),
        _ptr(out),
        ctypes.c_int32(state.blocksize),
        ctypes.c_int32(out.numel()),
        stream,
    )
    return out
