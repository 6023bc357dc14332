#!/usr/bin/env bash
# Device run (carry [".whl"]): varlen attention GPU tests, then Llama-2-7B QLoRA: the plain loop at
# 512/4096 against tuner's padding-free packing of 512-token samples into 4096- and 16384-token rows,
# each speed switch on top of the previous one. Liger patches model classes for the whole process,
# so its rows run in a process of their own. Results: $OUT/<date>-packing.json, logs in $OUT/logs/.
set -u
source bench/wheels_setup.sh || exit 1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_attention.py -s > "$OUT/logs/gpu-attention-tests.log" 2>&1
tail -8 "$OUT/logs/gpu-attention-tests.log"
F="$OUT/$(date +%F)-packing.json"
B="--shape llama2-7b --method qlora --steps 6 --warmup 2 --in-process --out $F"
P="--seq 4096,16384 --sample-len 512 --tool tuner"
timeout 200 python3 bench/bench_train.py $B --seq 512,4096 --tool plain > "$OUT/logs/plain.log" 2>&1; echo "plain: exit $?"
timeout 300 python3 bench/bench_train.py $B $P --variant sdpa-mask:env.TUNER_VARLEN=off --variant varlen \
  --variant varlen-bf16base:env.TUNER_KBIT_UPCAST=off > "$OUT/logs/tuner.log" 2>&1; echo "tuner: exit $?"
timeout 150 python3 bench/bench_train.py $B $P --variant varlen-bf16base-liger:env.TUNER_KBIT_UPCAST=off,env.TUNER_LIGER=on \
  > "$OUT/logs/tuner-liger.log" 2>&1; echo "tuner liger: exit $?"
grep -h -E "Error|error:" "$OUT"/logs/*.log | grep -v '"error": null' | sort | uniq -c | head -20
python3 bench/bench_train.py --report "$F"
