#!/usr/bin/env bash
# Device run prepared in session 5, not yet run (carry [".whl"]): LoRA dropout drawn inside Triton
# kernels (TUNER_LORA_DROPOUT_KERNEL=on, off by default) — its GPU test, then the speed-target rows and
# the bf16 LoRA row's profile (GPU idle gaps) with it off and on. ~6 minutes.
set -u
source bench/runs/lib.sh
D=$(date +%F)
timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_lora_fused.py > "$OUT/logs/gpu-lora-fused.log" 2>&1
grep -E "passed|failed|FAILED" "$OUT/logs/gpu-lora-fused.log" | tail -4
S="$OUT/$D-drawn-dropout.json"
B="--steps 10 --warmup 3 --in-process --out $S"
V="--variant default --variant drawn:env.TUNER_LORA_DROPOUT_KERNEL=on"
run l3l 150 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B $V
run l2 150 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B $V
run profile 120 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner --steps 4 --warmup 3 --in-process --out "$OUT/p.json" --profile "$OUT/profiles" --profile-cuda $V
python3 bench/bench_train.py --report "$S"
grep -A2 "GPU idle gaps" "$OUT"/profiles/*.txt | head -8
rm -f "$OUT"/*.lock "$OUT/p.json"
tar czf "$OUT/logs.tgz" -C "$OUT" logs profiles && rm -rf "$OUT/logs" "$OUT/profiles"
