#!/usr/bin/env bash
# Device run (carry [".whl"]): the training and attention GPU tests with CUDA graphs on by default.
set -u
source bench/runs/lib.sh
timeout 180 python3 -m pytest -v -s -p no:cacheprovider tests/gpu/test_gpu_train.py tests/gpu/test_gpu_attention.py \
  -k "not deepspeed" > "$OUT/logs/gpu-defaults-tests.log" 2>&1
grep -E "PASSED|FAILED|passed|failed|first .* last" "$OUT/logs/gpu-defaults-tests.log" | cut -c1-200 | tail -14
