#!/usr/bin/env bash
# Session 7, last device minutes (carry [".whl"]): the 131,072-token Llama-3-8B QLoRA row held to 80 GiB
# again, with PyTorch's expandable segments. In next-session7-d.sh the allocator reserved 43.1 GiB for a
# 34.6 GiB peak: fragmentation from the offloaded inputs and the recomputed layer's large temporaries.
# How much of it expandable segments give back decides how far past 128k an 80 GB card goes.
set -u
source bench/runs/lib.sh
S="$OUT/$(date +%F)-long-context-expandable.json"
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True run long 200 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 131072 --tool tuner --steps 1 --warmup 1 --in-process --out "$S" --variant cap80-expandable:env.TUNER_GPU_MEMORY_GIB=80
python3 bench/bench_train.py --report "$S"
grep -hE "Error|exceeds|OutOfMemory" "$OUT"/logs/long.log | tail -3
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
