#!/usr/bin/env bash
# Device run (carry [".whl"]): CUDA graphs of the decoder layers (TUNER_CUDA_GRAPHS) on the issue's
# 4096-token rows, each tuner row (default, graphs) beside the plain loop in the same process (plain first:
# Liger's patches are process-wide). Results: $OUT/<date>-graphs-rows.json; logs in $OUT/logs.
set -u
source bench/runs/lib.sh
timeout 60 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_layer_graphs.py > "$OUT/logs/gpu-graphs-tests.log" 2>&1
grep -E "varlen with|samples|after a|graphs:|passed|failed|Error|assert" "$OUT/logs/gpu-graphs-tests.log" | cut -c1-300 | tail -12
F="$OUT/$(date +%F)-graphs-rows.json"
B="--steps 8 --warmup 3 --in-process --out $F"
G="graphs:env.TUNER_CUDA_GRAPHS=on"
run l2 230 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B --variant default --variant $G
run l3 250 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 4096 --tool tuner $B --variant default --variant $G
run l3-lora 150 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --variant default --variant $G
python3 bench/bench_train.py --report "$F"
python3 -c "
import json; [print(r.get('model'), r.get('variant'), r.get('cuda_graphs')) for r in json.load(open('$F'))]"
rm -f "$OUT"/*.lock
