#!/usr/bin/env bash
# Session 7, fourth device call (carry [".whl"]): the 131,072-token row of next-session7-c.sh again
# (there it asked for --warmup 0 with one step, which the bench refuses).
set -u
source bench/runs/lib.sh
S="$OUT/$(date +%F)-long-context.json"
run long 420 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 131072 --tool tuner --steps 1 --warmup 1 --in-process --out "$S" --variant cap80:env.TUNER_GPU_MEMORY_GIB=80
python3 bench/bench_train.py --report "$S"
grep -hE "Error|error|exceeds|OutOfMemory|checkpoint" "$OUT"/logs/long.log | tail -4
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
