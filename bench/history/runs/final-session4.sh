#!/usr/bin/env bash
# Device run (carry [".whl"]): the capture probe (a second capture in one process; an eager dropout step
# after it), the graphs GPU tests (two training runs in one process), and Qwen2.5-7B QLoRA 4096: the plain
# loop, tuner's defaults and tuner with CUDA graphs in one process. Results: $OUT/<date>-qwen.json.
set -u
source bench/runs/lib.sh
timeout 60 python3 bench/graph_capture_probe.py 0.1 > "$OUT/logs/probe.log" 2>&1
grep -E "^==" "$OUT/logs/probe.log" | cut -c1-240 | head -8
timeout 75 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_layer_graphs.py > "$OUT/logs/gpu-graphs-tests.log" 2>&1
grep -E "samples|after a|graphs:|passed|failed|Error" "$OUT/logs/gpu-graphs-tests.log" | grep -v liger | cut -c1-240 | tail -8
F="$OUT/$(date +%F)-qwen.json"
timeout 230 python3 bench/bench_train.py --shape qwen2.5-7b --method qlora --seq 4096 --tool plain,tuner --steps 6 --warmup 3 \
  --in-process --out "$F" --variant default --variant graphs:env.TUNER_CUDA_GRAPHS=on > "$OUT/logs/qwen.log" 2>&1
echo "qwen: exit $?"
python3 bench/bench_train.py --report "$F"
rm -f "$OUT"/*.lock
