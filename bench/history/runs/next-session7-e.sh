#!/usr/bin/env bash
# Session 7, last device call (carry [".whl"]): the whole GPU suite with the final defaults (wide loss
# chunks on; DeepSpeed ran in next-session7-b.sh, so here it skips without deepspeed installed), then
# how far the longest context goes on an 80 GB card: 262,144 tokens, Llama-3-8B QLoRA, held to 80 GiB
# (tuner's estimate: 62.6 GiB allocated, 65.2 GiB on the device).
set -u
source bench/runs/lib.sh
timeout 250 python3 -m pytest -q -p no:cacheprovider tests/gpu -rs > "$OUT/logs/gpu-suite.log" 2>&1
grep -E "passed|failed|FAILED" "$OUT/logs/gpu-suite.log" | tail -6
S="$OUT/$(date +%F)-long-context-256k.json"
run long 290 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 262144 --tool tuner --steps 1 --warmup 1 --in-process --out "$S" --variant cap80:env.TUNER_GPU_MEMORY_GIB=80
python3 bench/bench_train.py --report "$S"
grep -hE "Error|exceeds|OutOfMemory" "$OUT"/logs/long.log | tail -3
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
