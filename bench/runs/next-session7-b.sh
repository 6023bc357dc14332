#!/usr/bin/env bash
# Device run prepared in session 6, not yet run (carry [".whl"]), ~6 minutes: what sessions 5 and 6 did
# not re-run with their defaults. The DeepSpeed GPU tests (deepspeed built from .whl's sdist), and the
# short-sample target: 512-token samples packed into 16384-token rows (Llama-2-7B QLoRA) beside the
# plain loop at 512 (window clock).
set -u
source bench/runs/lib.sh
source bench/device_setup.sh >> "$OUT/logs/setup.log" 2>&1 || { tail -5 "$OUT/logs/setup.log"; exit 1; }
D=$(date +%F)
timeout 200 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k "deepspeed" > "$OUT/logs/gpu-deepspeed.log" 2>&1
grep -E "passed|failed|FAILED" "$OUT/logs/gpu-deepspeed.log" | tail -4
S="$OUT/$D-packed.json"
B="--steps 10 --warmup 3 --in-process --out $S --clock window"
run l2-plain 120 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 512 --tool plain $B
run l2-packed 100 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 16384 --sample-len 512 --tool tuner $B
python3 bench/bench_train.py --report "$S"
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
