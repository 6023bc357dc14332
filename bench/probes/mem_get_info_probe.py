"""Does ``torch.cuda.mem_get_info`` (cudaMemGetInfo) wait for the GPU, and how long does it take?

bench/train_speed sampled it after every step until 2026-12-01 (session 6). This times it on an idle GPU and
right after queueing ~0.2 s of matmuls: if the second takes about as long as the queued work, the call
synchronizes, and every per-step sample stalled the step boundary.

    python3 bench/probes/mem_get_info_probe.py
"""

from __future__ import annotations

import statistics
import time

import torch


def main() -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    idle = []
    for _ in range(50):
        started = time.perf_counter()
        torch.cuda.mem_get_info()
        idle.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(100):
        a @ a
    torch.cuda.synchronize()
    work_s = time.perf_counter() - started
    busy = []
    for _ in range(5):
        for _ in range(100):
            a @ a
        started = time.perf_counter()
        torch.cuda.mem_get_info()
        busy.append(time.perf_counter() - started)
        torch.cuda.synchronize()
    print(
        f"mem_get_info on an idle GPU: median {1000 * statistics.median(idle):.3f} ms, max {1000 * max(idle):.3f} ms; "
        f"right after queueing {1000 * work_s:.0f} ms of matmuls: median {1000 * statistics.median(busy):.3f} ms "
        f"({'waits for the GPU' if statistics.median(busy) > work_s / 2 else 'does not wait for the GPU'})"
    )


if __name__ == "__main__":
    main()
