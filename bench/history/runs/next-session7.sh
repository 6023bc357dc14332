#!/usr/bin/env bash
# Device run prepared in session 6, run in session 7 (carry [".whl"], 354 s; docs/benchmarks.md, session 7):
# 1. TUNER_LOSS_CHUNKS=wide (tuner/fast/loss_chunks.py, off until measured): its GPU test, and the
#    speed-target rows with it off and on (window clock, as the targets table).
# 2. The GPU idle gaps left with today's defaults under the window clock (session 6's gap profile ran
#    with the per-step clock, whose sync recreates the step-boundary gap).
# 3. Whether cudaMemGetInfo waits for the GPU (bench/mem_get_info_probe.py): the bench sampled it after
#    every step until session 6; rows now record mem_get_info_ms.
# Then bench/runs/next-session7-b.sh to -f.sh.
set -u
source bench/runs/lib.sh
D=$(date +%F)
timeout 30 python3 bench/mem_get_info_probe.py
timeout 90 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k "wide_loss_chunks" > "$OUT/logs/gpu-tests.log" 2>&1
grep -E "passed|failed|FAILED|budgets" "$OUT/logs/gpu-tests.log" | tail -5
S="$OUT/$D-loss-chunks.json"
B="--steps 10 --warmup 3 --in-process --out $S --clock window"
V="--variant default --variant wide:env.TUNER_LOSS_CHUNKS=wide"
run l3l 120 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B $V
run l2 130 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B $V
run l3q 100 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 4096 --tool tuner $B $V
python3 bench/bench_train.py --report "$S"
run gaps 90 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner --steps 4 --warmup 3 --in-process --clock window --out "$OUT/p.json" --profile "$OUT/gaps" --profile-cuda $V
grep -A12 "GPU idle gaps" "$OUT"/gaps/*.txt | head -30
rm -f "$OUT"/*.lock "$OUT/p.json"
tar czf "$OUT/logs.tgz" -C "$OUT" logs gaps && rm -rf "$OUT/logs" "$OUT/gaps"
