#!/usr/bin/env bash
# Device run 3 of session 6 (carry [".whl"]): who makes the bf16 LoRA step wait for the GPU.
# Deferred logging did not change its speed (session6-a), so another sync or host stall idles the
# GPU at the step boundary. The timed steps' synchronizing ops by Python call site
# (--profile-syncs), and the GPU idle gaps with deferred logging on (--profile-cuda). ~4 minutes.
set -u
source bench/runs/lib.sh
B="--shape llama3-8b --method lora --seq 4096 --tool tuner --steps 4 --warmup 3 --in-process --out $OUT/p.json"
V="--variant default --variant deferred:env.TUNER_DEFERRED_LOGGING=on"
run syncs 150 python3 bench/bench_train.py $B --profile "$OUT/syncs" --profile-syncs $V
run gaps 100 python3 bench/bench_train.py $B --profile "$OUT/gaps" --profile-cuda --variant deferred:env.TUNER_DEFERRED_LOGGING=on
cat "$OUT"/syncs/*.txt
grep -A30 "GPU idle gaps" "$OUT"/gaps/*.txt | head -40
rm -f "$OUT"/*.lock "$OUT/p.json"
tar czf "$OUT/logs.tgz" -C "$OUT" logs syncs gaps && rm -rf "$OUT/logs" "$OUT/syncs" "$OUT/gaps"
