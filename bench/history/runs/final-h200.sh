#!/usr/bin/env bash
# Device run (carry [".whl"]): the issue-6 table with this session's defaults (checkpointing only the
# layers memory needs, fused LoRA, fused AdamW), tuner against the plain loop on the same GPU in the
# same run; memory-lean rows (every layer checkpointed, paged AdamW) for the memory targets.
# Plain rows run first in each process: Liger's patches are process-wide once a tuner row applies them.
# Results: $OUT/<date>-final.json.
set -u
source bench/wheels_setup.sh || exit 1
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_train.py tests/gpu/test_gpu_lora_fused.py \
  > "$OUT/logs/gpu-tests.log" 2>&1
grep -E "passed|failed|error" "$OUT/logs/gpu-tests.log" | tail -3
F="$OUT/$(date +%F)-final.json"
B="--steps 10 --warmup 3 --in-process --out $F"
LEAN="lean-memory:env.TUNER_CHECKPOINT_LAYERS=all"
run() { local name=$1; shift; timeout "$@" > "$OUT/logs/$name.log" 2>&1; echo "$name: exit $?"; }
run l2-plain 160 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 512,4096 --tool plain $B
run l2-tuner 90 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner $B --variant default --variant $LEAN
run l2-packed 40 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 16384 --sample-len 512 --tool tuner $B
run l3-plain 190 python3 bench/bench_train.py --shape llama3-8b --method qlora,lora --seq 2048,4096 --tool plain $B
run l3-tuner 120 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 2048,4096 --tool tuner $B --variant default --variant $LEAN
run l3-lora 40 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B
grep -h -E "Error|error:" "$OUT"/logs/*.log | grep -v '"error": null' | grep -v liger_kernel.ops.backends | sort | uniq -c | head
python3 bench/bench_train.py --report "$F"
rm -f "$OUT"/*.lock
