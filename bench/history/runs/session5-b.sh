#!/usr/bin/env bash
# Device run 2 of session 5 (carry [".whl"]): the new defaults (lean step bookkeeping, the embedding
# in host memory when every layer is checkpointed, cuDNN attention for one-sample rows) on the three
# speed-target rows beside the plain loop, with cuDNN attention off as the control; then the GPU tests
# these touch.
set -u
source bench/runs/lib.sh
D=$(date +%F)
S="$OUT/$D-speed2.json"
B="--steps 10 --warmup 3 --in-process --out $S"
V="--variant default --variant no-cudnn:env.TUNER_CUDNN_ATTENTION=off"
run l2 150 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool plain,tuner $B $V
run l3q 120 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 4096 --tool tuner $B $V
run l3l 120 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B $V
python3 bench/bench_train.py --report "$S"
timeout 180 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_attention.py tests/gpu/test_gpu_layer_graphs.py tests/gpu/test_gpu_train.py > "$OUT/logs/gpu-tests.log" 2>&1
grep -E "loss varlen|passed|failed|FAILED|Error" "$OUT/logs/gpu-tests.log" | tail -12
rm -f "$OUT"/*.lock
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
