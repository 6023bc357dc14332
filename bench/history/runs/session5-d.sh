#!/usr/bin/env bash
# Device run 4 of session 5 (carry [".whl"]): the dropout-gradient kernel's exactness test (without
# fused multiply-add now); the three speed-target rows with every default of this session (lean
# steps now also skip Trainer's per-micro-step NaN check), timed with --clock window (a sync only
# around the timed window, as a run has) beside the usual per-step-sync clock.
set -u
source bench/runs/lib.sh
D=$(date +%F)
timeout 100 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_lora_fused.py -k dropout_grad > "$OUT/logs/gpu-dropout-grad.log" 2>&1
grep -E "passed|failed|FAILED" "$OUT/logs/gpu-dropout-grad.log" | tail -3
S="$OUT/$D-speed4.json"
B="--steps 10 --warmup 3 --in-process --out $S"
run l3l 120 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --clock window --variant default
run l3l-step 100 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --variant default
run l2 150 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B --clock window --variant default
run l3q 100 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 4096 --tool tuner $B --clock window --variant default
python3 bench/bench_train.py --report "$S"
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
