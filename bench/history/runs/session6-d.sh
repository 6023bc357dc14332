#!/usr/bin/env bash
# Device run 5 of session 6 (carry [".whl"]), the last of the session's budget. The three step-boundary
# switches together (TUNER_ASYNC_BATCH_COPY, TUNER_DEFERRED_LOGGING, TUNER_SKIP_PACKED_SCAN: "new"):
# the GPU tests of attention, layer graphs and training with them on; the speed-target rows against
# the current defaults (window clock); the GPU idle gaps left with them on. ~6.5 minutes.
set -u
source bench/runs/lib.sh
D=$(date +%F)
NEW="new:env.TUNER_ASYNC_BATCH_COPY=on,env.TUNER_DEFERRED_LOGGING=on,env.TUNER_SKIP_PACKED_SCAN=on"
TUNER_ASYNC_BATCH_COPY=on TUNER_DEFERRED_LOGGING=on TUNER_SKIP_PACKED_SCAN=on timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_attention.py tests/gpu/test_gpu_layer_graphs.py tests/gpu/test_gpu_train.py -k "not deepspeed" > "$OUT/logs/gpu-tests.log" 2>&1
grep -E "passed|failed|FAILED" "$OUT/logs/gpu-tests.log" | tail -4
S="$OUT/$D-step-boundary.json"
B="--steps 10 --warmup 3 --in-process --out $S --clock window"
run l3l 110 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --variant default --variant "$NEW"
run l2 100 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B --variant "$NEW"
run l3q 80 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 4096 --tool tuner $B --variant "$NEW"
python3 bench/bench_train.py --report "$S"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs" && mkdir -p "$OUT/logs"
run gaps 75 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner --steps 4 --warmup 3 --in-process --out "$OUT/p.json" --profile "$OUT/gaps" --profile-cuda --variant "$NEW"
grep -A12 "GPU idle gaps" "$OUT"/gaps/*.txt | head -14
rm -f "$OUT"/*.lock "$OUT/p.json"
tar czf "$OUT/gaps.tgz" -C "$OUT" gaps logs && rm -rf "$OUT/gaps" "$OUT/logs"
