#!/usr/bin/env bash
# Device run (carry [".whl"]): why CUDA-graph capture fails on packed rows of the small test model
# (bench/graph_capture_probe.py), the regenerated-dropout GPU test, and the memory-target rows with
# LoRA dropout regenerating its masks in checkpointed layers (every layer checkpointed; with and
# without the inputs offloaded). Results: $OUT/<date>-memory.json; logs in $OUT/logs.
set -u
source bench/runs/lib.sh
for p in 0.0 0.1; do
  timeout 70 python3 bench/graph_capture_probe.py $p > "$OUT/logs/probe-$p.log" 2>&1
  grep -E "^==|Error|error" "$OUT/logs/probe-$p.log" | grep -v liger | cut -c1-240 | head -8
done
timeout 60 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_lora_fused.py > "$OUT/logs/gpu-fused-tests.log" 2>&1
grep -E "peak|passed|failed" "$OUT/logs/gpu-fused-tests.log" | cut -c1-240 | tail -5
F="$OUT/$(date +%F)-memory.json"
B="--steps 6 --warmup 2 --in-process --out $F"
V="--variant lean-memory:env.TUNER_CHECKPOINT_LAYERS=all --variant offload:env.TUNER_CHECKPOINT_LAYERS=offload"
run l2 170 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner $B $V
run l3 190 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 2048 --tool tuner $B $V
python3 bench/bench_train.py --report "$F"
rm -f "$OUT"/*.lock
