#!/usr/bin/env bash
# Device run (carry [".whl"]): varlen GPU tests, then Llama-3-8B (128k vocabulary) with tuner's defaults
# (varlen attention, bf16 k-bit preparation, Liger) against the plain loop: QLoRA at 2048/4096,
# packed 512-token samples in 16384-token rows, bf16 LoRA at 4096. Results: $OUT/<date>-llama3.json.
set -u
source bench/wheels_setup.sh || exit 1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_attention.py -s > "$OUT/logs/gpu-attention-tests.log" 2>&1
grep -E "passed|failed|loss sdpa" "$OUT/logs/gpu-attention-tests.log"
F="$OUT/$(date +%F)-llama3.json"
B="--shape llama3-8b --steps 6 --warmup 2 --in-process --out $F"
run() { local name=$1; shift; timeout "$@" > "$OUT/logs/$name.log" 2>&1; echo "$name: exit $?"; }
run plain-qlora 200 python3 bench/bench_train.py $B --method qlora --seq 512,2048,4096 --tool plain
run tuner-qlora 120 python3 bench/bench_train.py $B --method qlora --seq 2048,4096 --tool tuner
run tuner-packed 100 python3 bench/bench_train.py $B --method qlora --seq 16384 --sample-len 512 --tool tuner
run plain-lora 100 python3 bench/bench_train.py $B --method lora --seq 4096 --tool plain
run tuner-lora 100 python3 bench/bench_train.py $B --method lora --seq 4096 --tool tuner
grep -h -E "Error|error:" "$OUT"/logs/*.log | grep -v '"error": null' | sort | uniq -c | head -20
python3 bench/bench_train.py --report "$F"
