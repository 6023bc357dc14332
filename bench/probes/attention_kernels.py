"""Causal attention kernels on this GPU, forward + backward, at the benchmark's shapes (one 4096-token
sample, or eight 512-token samples packed into one row; 32 query heads of 128, 32 or 8 KV heads).

Why: in a Llama-2 QLoRA 4096 step the flash-attention kernels are ~20% of GPU time (torch.profiler,
bench/history/benchmarks-2026-11.md), and PyTorch ships several: the varlen flash kernel tuner uses (FlashAttention-2),
SDPA's flash backend (the same kernel, dense), and SDPA's cuDNN backend (written for Hopper). This
times each that this torch has, to tell whether switching pays before wiring it into training.

    python3 bench/probes/attention_kernels.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.nn import functional as F


def timed(fn, iters: int = 20) -> float:
    """Mean milliseconds of fn() (forward and backward), after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def tensors(tokens: int, heads: int, kv_heads: int, dim: int = 128):
    def make(h):
        return torch.randn(tokens, h, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    return make(heads), make(kv_heads), make(kv_heads)


def varlen_case(samples: list[int], heads: int, kv_heads: int):
    from tuner.fast.attention import varlen_kernel

    varlen_attn, causal, takes_gqa = varlen_kernel()
    q, k, v = tensors(sum(samples), heads, kv_heads)
    cu = torch.tensor([0, *torch.tensor(samples).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    longest = max(samples)
    grad = torch.randn_like(q)
    gqa = {"enable_gqa": True} if kv_heads != heads else {}

    def step():
        out = varlen_attn(q, k, v, cu, cu, longest, longest, **causal, **gqa)
        out.backward(grad)

    return step


def sdpa_case(tokens: int, heads: int, kv_heads: int, backend):
    from torch.nn.attention import sdpa_kernel

    q, k, v = (
        t.detach().transpose(0, 1).unsqueeze(0).requires_grad_() for t in tensors(tokens, heads, kv_heads)
    )
    grad = torch.randn_like(q)
    gqa = {"enable_gqa": True} if kv_heads != heads else {}

    def step():
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
        out.backward(grad)

    return step


def flops(samples: list[int], heads: int, dim: int = 128) -> float:
    # causal: half the QK^T and PV products; backward ~2.5x the forward
    pairs = sum(s * s / 2 for s in samples)
    return 4 * pairs * dim * heads * 3.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the rows as JSON here too")
    opts = parser.parse_args()
    from torch.nn.attention import SDPBackend

    rows = []
    for kv_heads in (32, 8):
        for samples in ([4096], [512] * 8):
            cases = [("varlen (tuner now)", varlen_case, (samples, 32, kv_heads))]
            if len(samples) == 1:
                cases += [
                    ("sdpa flash", sdpa_case, (samples[0], 32, kv_heads, SDPBackend.FLASH_ATTENTION)),
                    ("sdpa cudnn", sdpa_case, (samples[0], 32, kv_heads, SDPBackend.CUDNN_ATTENTION)),
                ]
            for name, build, args in cases:
                row = {"kernel": name, "samples": f"{len(samples)}x{samples[0]}", "kv_heads": kv_heads}
                try:
                    ms = timed(build(*args))
                    row.update(ms=round(ms, 3), tflops=round(flops(samples, 32) / ms / 1e9, 1))
                except Exception as exc:  # a backend this torch or GPU lacks: say so, go on
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
    }
    print(json.dumps(meta))
    if opts.out:
        with open(opts.out, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
