#!/usr/bin/env bash
# Device run (carry [".whl"]): CUDA graphs captured with fresh leaves for the trainable weights
# (tuner/fast/layer_graphs.py): the capture probe, the graphs GPU tests, and Llama-2-7B QLoRA 4096 with
# and without graphs in one process. Results: $OUT/<date>-graphs-fix.json; logs in $OUT/logs.
set -u
source bench/runs/lib.sh
timeout 70 python3 bench/graph_capture_probe.py 0.1 > "$OUT/logs/probe.log" 2>&1
grep -E "^==|Error" "$OUT/logs/probe.log" | grep -v liger | cut -c1-240 | head -8
timeout 90 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_layer_graphs.py > "$OUT/logs/gpu-graphs-tests.log" 2>&1
grep -E "varlen with|samples|after a|graphs:|passed|failed|Error" "$OUT/logs/gpu-graphs-tests.log" | grep -v liger | cut -c1-240 | tail -10
F="$OUT/$(date +%F)-graphs-fix.json"
timeout 200 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner --steps 8 --warmup 3 \
  --in-process --out "$F" --variant default --variant graphs:env.TUNER_CUDA_GRAPHS=on > "$OUT/logs/bench.log" 2>&1
echo "bench: exit $?"
python3 bench/bench_train.py --report "$F"
python3 -c "
import json; [print(r.get('variant'), r.get('cuda_graphs'), r.get('losses', r.get('loss'))) for r in json.load(open('$F'))]"
rm -f "$OUT"/*.lock
