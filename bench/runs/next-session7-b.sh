#!/usr/bin/env bash
# Device run prepared in session 6, not yet run (carry [".whl"]): what sessions 5 and 6 did
# not re-run with their defaults. The DeepSpeed GPU tests (deepspeed built from .whl's sdist), and the
# short-sample target: 512-token samples packed into 16384-token rows (Llama-2-7B QLoRA) beside the
# plain loop at 512 (window clock); the 131,072-token Llama-3-8B QLoRA row held to 80 GiB
# (TUNER_GPU_MEMORY_GIB=80). ~9 minutes: run the tests and the rows in two calls if time is short.
set -u
source bench/runs/lib.sh
source bench/device_setup.sh >> "$OUT/logs/setup.log" 2>&1 || { tail -5 "$OUT/logs/setup.log"; exit 1; }
D=$(date +%F)
timeout 200 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k "deepspeed or memory_cap" > "$OUT/logs/gpu-deepspeed.log" 2>&1
grep -E "passed|failed|FAILED" "$OUT/logs/gpu-deepspeed.log" | tail -4
S="$OUT/$D-packed.json"
B="--steps 10 --warmup 3 --in-process --out $S --clock window"
run l2-plain 120 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 512 --tool plain $B
run l2-packed 100 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 16384 --sample-len 512 --tool tuner $B
# The longest-context target on an 80 GB card, with today's defaults, on this bigger card held to 80 GiB.
run long 200 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 131072 --tool tuner --steps 1 --warmup 0 --in-process --out $S --variant cap80:env.TUNER_GPU_MEMORY_GIB=80
python3 bench/bench_train.py --report "$S"
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
