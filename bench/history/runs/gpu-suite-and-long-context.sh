#!/usr/bin/env bash
# Device run (carry [".whl"]): the GPU test suite with the new speed defaults, then the longest-context
# probe: one Llama-3-8B QLoRA step on a single 131072-token row (tuner's defaults).
set -u
source bench/device_setup.sh || exit 1
timeout 330 python3 -m pytest -p no:cacheprovider tests/gpu -v -s --ignore=tests/gpu/test_gpu_multi.py > "$OUT/logs/gpu-tests.log" 2>&1
grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" "$OUT/logs/gpu-tests.log" | tail -20
F="$OUT/$(date +%F)-long-context.json"
timeout 250 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 131072 --tool tuner --steps 1 --warmup 0 \
  --in-process --out "$F" > "$OUT/logs/long-context.log" 2>&1; echo "long context: exit $?"
tail -3 "$OUT/logs/long-context.log" | cut -c1-600
[ -f "$F" ] && python3 bench/bench_train.py --report "$F"
