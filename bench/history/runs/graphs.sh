#!/usr/bin/env bash
# Device run (carry [".whl"]): CUDA graphs of the decoder layers (TUNER_CUDA_GRAPHS, tuner/fast/layer_graphs.py).
# Their GPU tests first, then Llama-2-7B QLoRA at 4096 with and without them in one process, then the
# GPU tests not yet run with this session's code (offload, checkpointing plans, DeepSpeed).
# Results: $OUT/<date>-graphs.json; logs in $OUT/logs.
set -u
mkdir -p "$OUT/logs"
source bench/device_setup.sh > "$OUT/logs/setup.log" 2>&1 || { tail -5 "$OUT/logs/setup.log"; exit 1; }
tail -2 "$OUT/logs/setup.log"
T="timeout 75 python3 -m pytest -q -s -p no:cacheprovider"
$T tests/gpu/test_gpu_layer_graphs.py > "$OUT/logs/gpu-graphs-tests.log" 2>&1
grep -E "varlen with|samples|after a|graphs:|passed|failed|Error" "$OUT/logs/gpu-graphs-tests.log" | cut -c1-300 | tail -12
F="$OUT/$(date +%F)-graphs.json"
timeout 230 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner --steps 8 --warmup 3 \
  --in-process --out "$F" --variant default --variant graphs:env.TUNER_CUDA_GRAPHS=on > "$OUT/logs/graphs-bench.log" 2>&1
echo "bench: exit $?"
python3 bench/bench_train.py --report "$F"
timeout 200 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_offload.py \
  tests/gpu/test_gpu_train.py -k "offload or plan or deepspeed" > "$OUT/logs/gpu-pending-tests.log" 2>&1
grep -E "PASSED|FAILED|passed|failed|peak above|Error" "$OUT/logs/gpu-pending-tests.log" | cut -c1-300 | tail -12
rm -f "$OUT"/*.lock
