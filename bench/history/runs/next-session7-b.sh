#!/usr/bin/env bash
# Session 7, second device call (carry [".whl"]), ~8 minutes: the DeepSpeed GPU tests with today's
# defaults (deepspeed built from .whl's sdist; not run since session 4) and TUNER_GPU_MEMORY_GIB's GPU
# test; then the bf16 LoRA target row with wide loss chunks now the default, interleaved with Liger's own
# chunks (two of each, one process, window clock) to see the gain beside the call-to-call spread.
set -u
source bench/runs/lib.sh
source bench/device_setup.sh >> "$OUT/logs/setup.log" 2>&1 || { tail -5 "$OUT/logs/setup.log"; exit 1; }
D=$(date +%F)
timeout 240 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k "deepspeed or memory_cap" > "$OUT/logs/gpu-deepspeed.log" 2>&1
grep -E "passed|failed|FAILED|Error" "$OUT/logs/gpu-deepspeed.log" | tail -6
S="$OUT/$D-wide-repeat.json"
V="--variant liger1:env.TUNER_LOSS_CHUNKS=liger --variant wide1 --variant liger2:env.TUNER_LOSS_CHUNKS=liger --variant wide2"
run l3l 180 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner --steps 10 --warmup 3 --in-process --clock window --out "$S" $V
python3 bench/bench_train.py --report "$S"
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
