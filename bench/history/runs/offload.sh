#!/usr/bin/env bash
# Device run (carry [".whl"]): the offloaded-checkpoint GPU test, then Llama-2-7B QLoRA at 4096 with every
# layer checkpointed and the checkpointed inputs in host memory (TUNER_CHECKPOINT_LAYERS=offload), the
# memory-target configuration, beside every layer checkpointed without offload. Results: $OUT/<date>-offload.json.
set -u
source bench/wheels_setup.sh > /dev/null || exit 1
timeout 60 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_offload.py > "$OUT/logs/gpu-offload-test.log" 2>&1
grep -E "peak above|passed|failed|Error" "$OUT/logs/gpu-offload-test.log" | tail -4
F="$OUT/$(date +%F)-offload.json"
timeout 170 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner --steps 6 --warmup 2 \
  --in-process --out "$F" --variant offload:env.TUNER_CHECKPOINT_LAYERS=offload --variant lean-memory:env.TUNER_CHECKPOINT_LAYERS=all \
  > "$OUT/logs/offload.log" 2>&1; echo "bench: exit $?"
python3 bench/bench_train.py --report "$F"
rm -f "$OUT"/*.lock
