#!/usr/bin/env bash
# Device run 1b of session 6 (carry [".whl"]): deferred log read-back (TUNER_DEFERRED_LOGGING, off
# until measured). Its GPU test and the embedding hand-over test; then the speed-target rows with it
# off and on, bf16 LoRA under both clocks (per-step sync, and --clock window: a sync only around the
# timed window, as a training run has). ~8 minutes.
set -u
source bench/runs/lib.sh
D=$(date +%F)
timeout 150 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k "deferred or embedding" > "$OUT/logs/gpu-train.log" 2>&1
grep -E "passed|failed|FAILED|pinned|peak off" "$OUT/logs/gpu-train.log" | tail -5
S="$OUT/$D-deferred.json"
B="--steps 10 --warmup 3 --in-process --out $S"
V="--variant default --variant deferred:env.TUNER_DEFERRED_LOGGING=on"
run l3l-window 130 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --clock window $V
run l3l-step 130 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B $V
run l2 150 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B --clock window $V
python3 bench/bench_train.py --report "$S"
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
