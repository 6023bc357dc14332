#!/usr/bin/env bash
# Device run (carry [".whl"]): where a 4096-token step's time goes (torch.profiler: kernels by GPU
# time, GPU busy share) and what turning gradient checkpointing off buys, on Llama-2-7B QLoRA and
# Llama-3-8B bf16 LoRA; no-checkpointing peaks calibrate the estimate's activation bytes.
# Results: $OUT/<date>-nockpt.json, profiles in $OUT/profiles/.
set -u
source bench/wheels_setup.sh || exit 1
F="$OUT/$(date +%F)-nockpt.json"
B="--steps 6 --warmup 2 --in-process --out $F"
P="--steps 3 --warmup 2 --in-process --out $OUT/profiled.json --profile $OUT/profiles --profile-cuda"
NO="nockpt:set.gradient_checkpointing=false"
run() { local name=$1; shift; timeout "$@" > "$OUT/logs/$name.log" 2>&1; echo "$name: exit $?"; }
run l2-timed 200 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner $B \
  --variant default --variant $NO --variant "nockpt-nodrop:set.gradient_checkpointing=false,set.lora_dropout=0"
run l2-profile 90 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner $P --variant default --variant $NO
run l3-timed 180 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --variant default --variant $NO
run l3-profile 60 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $P --variant $NO
run l3-qlora 60 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 2048 --tool tuner $B --variant $NO
grep -h -E "Error|error:" "$OUT"/logs/*.log | grep -v '"error": null' | sort | uniq -c | head -20
python3 bench/bench_train.py --report "$F"
for f in "$OUT"/profiles/*.txt; do echo "== $f"; sed -n 2,3p "$f"; done
