"""Where the offloaded checkpoints' step peaks on this GPU: the GPU test's model (8 layers of hidden 1024,
8192 tokens, fused LoRA with dropout), one step with every layer checkpointed and one with their inputs
offloaded (tuner.fast.checkpoint_offload), under the allocator's memory history; prints the tensors alive
at each step's peak, largest first, with the line that allocated them.

Why: the GPU test asks offloading to take at least 5 of the 8 inputs off the peak (the estimate prices 2
on the device); sessions 13 and 14 measured about 4.5, so something else is alive at the offloaded peak.

    python3 bench/probes/offload_peak.py [--out peaks.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from tests.gpu.test_gpu_offload import _step

INPUT_BYTES = 8192 * 1024 * 2  # one layer's bf16 input


def _where(frames: list[dict]) -> str:
    """The innermost frame in tuner/, transformers/, peft/ or torch's checkpoint code."""
    for frame in frames:
        name = frame.get("filename", "")
        if any(part in name for part in ("tuner/", "transformers/", "peft/", "checkpoint.py", "tests/")):
            return f"{name.rsplit('/', 2)[-2:]}:{frame.get('line')} {frame.get('name')}"
    return "?"


def peak_blocks(trace: list[dict]) -> tuple[int, list[tuple[int, str]]]:
    """(bytes alive at the peak, the blocks alive then) by replaying the allocator's trace."""
    alive: dict[int, tuple[int, str]] = {}
    total = best = 0
    best_alive: dict = {}
    for event in trace:
        action, addr, size = event["action"], event["addr"], event["size"]
        if action == "alloc":
            alive[addr] = (size, _where(event.get("frames", [])))
            total += size
            if total > best:
                best, best_alive = total, dict(alive)
        elif action in ("free_requested",) and addr in alive:
            total -= alive.pop(addr)[0]
    return best, sorted(best_alive.values(), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    ids = torch.randint(0, 500, (1, 8192), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    _step(True, ids)  # warm-up: kernels chosen, pinned memory cached
    report = {}
    for offload in (False, True):
        torch.cuda.memory._record_memory_history(max_entries=200_000)
        _, _, peak = _step(offload, ids)
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        trace = snapshot["device_traces"][torch.cuda.current_device()]
        best, blocks = peak_blocks(trace)
        name = "offloaded" if offload else "checkpointed"
        inputs = sum(1 for size, _ in blocks if size == INPUT_BYTES)
        print(
            f"{name}: peak above weights {peak / 2**20:.1f} MiB; replayed peak {best / 2**20:.1f} MiB, "
            f"{inputs} blocks of one input's size alive"
        )
        for size, where in blocks[:25]:
            print(f"  {size / 2**20:8.2f} MiB  {where}")
        report[name] = {"peak": peak, "replayed": best, "blocks": blocks[:60]}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
