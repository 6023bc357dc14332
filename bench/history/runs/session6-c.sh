#!/usr/bin/env bash
# Device run 4 of session 6 (carry [".whl"]). session6-b counted a bf16 LoRA step's device syncs: 5 of
# its 11 are accelerate's blocking batch copies at the step boundary (then Trainer's logging 2,
# Liger's loss 3, the model forward 1). Measured here: TUNER_ASYNC_BATCH_COPY=on (non-blocking copies
# from pinned memory), alone and with TUNER_DEFERRED_LOGGING=on; the GPU tests with both on; the syncs
# left. ~9 minutes.
set -u
source bench/runs/lib.sh
D=$(date +%F)
TUNER_ASYNC_BATCH_COPY=on TUNER_DEFERRED_LOGGING=on timeout 130 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k "lower_the_loss or deferred" > "$OUT/logs/gpu-train.log" 2>&1
grep -E "passed|failed|FAILED|pinned" "$OUT/logs/gpu-train.log" | tail -4
S="$OUT/$D-async-copy.json"
B="--steps 10 --warmup 3 --in-process --out $S"
V="--variant default --variant async:env.TUNER_ASYNC_BATCH_COPY=on --variant both:env.TUNER_ASYNC_BATCH_COPY=on,env.TUNER_DEFERRED_LOGGING=on"
run l3l-window 140 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --clock window $V
run l3l-step 130 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B $V
run l2 150 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B --clock window $V
run l3q 130 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 4096 --tool tuner $B --clock window $V
run syncs 80 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner --steps 4 --warmup 3 --in-process --out "$OUT/p.json" --profile "$OUT/syncs" --profile-syncs --variant both:env.TUNER_ASYNC_BATCH_COPY=on,env.TUNER_DEFERRED_LOGGING=on
python3 bench/bench_train.py --report "$S"
cat "$OUT"/syncs/*.txt
rm -f "$OUT"/*.lock "$OUT/p.json"
tar czf "$OUT/logs.tgz" -C "$OUT" logs syncs && rm -rf "$OUT/logs" "$OUT/syncs"
