#!/usr/bin/env bash
# Device run (carry [".whl"]): the two rows final-h200.sh lost to its timeouts, each beside its plain
# baseline from the same process: 512-token samples packed into 16384-token rows (Llama-2-7B QLoRA) and
# Llama-3-8B bf16 LoRA at 4096. Results: $OUT/<date>-final2.json.
set -u
source bench/wheels_setup.sh || exit 1
F="$OUT/$(date +%F)-final2.json"
B="--steps 10 --warmup 3 --in-process --out $F"
run() { local name=$1; shift; timeout "$@" > "$OUT/logs/$name.log" 2>&1; echo "$name: exit $?"; }
run l2-plain 150 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 512 --tool plain $B
run l2-packed 100 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 16384 --sample-len 512 --tool tuner $B
run l3-lora 200 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool plain,tuner $B
python3 bench/bench_train.py --report "$F"
rm -f "$OUT"/*.lock
