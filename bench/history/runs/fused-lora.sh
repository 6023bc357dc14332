#!/usr/bin/env bash
# Device run (carry [".whl"]): GPU tests (fused LoRA, training, attention), then what the fused LoRA
# function (TUNER_FUSED_LORA) and fused AdamW buy at 4096 tokens with the automatic choice of
# checkpointed layers (none on this card): Llama-2-7B QLoRA, Llama-3-8B bf16 LoRA and QLoRA, and a
# torch.profiler view of the fastest Llama-2 variant. Results: $OUT/<date>-fused.json, profiles.tar.
set -u
source bench/wheels_setup.sh || exit 1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gpu_lora_fused.py tests/gpu/test_gpu_train.py \
  tests/gpu/test_gpu_attention.py > "$OUT/logs/gpu-tests.log" 2>&1
grep -E "passed|failed|error" "$OUT/logs/gpu-tests.log" | tail -5
F="$OUT/$(date +%F)-fused.json"
B="--steps 6 --warmup 2 --in-process --out $F"
FU="fused:env.TUNER_FUSED_LORA=on"
FA="fusedadam:set.optimizer=adamw_torch_fused"
BOTH="fused+adam:env.TUNER_FUSED_LORA=on,set.optimizer=adamw_torch_fused"
run() { local name=$1; shift; timeout "$@" > "$OUT/logs/$name.log" 2>&1; echo "$name: exit $?"; }
run l2 200 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner $B \
  --variant default --variant $FU --variant $FA --variant $BOTH
run l2-profile 60 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner \
  --steps 3 --warmup 2 --in-process --out "$OUT/profiled.json" --profile "$OUT/profiles" --profile-cuda --variant $BOTH
run l3-lora 170 python3 bench/bench_train.py --shape llama3-8b --method lora --seq 4096 --tool tuner $B --variant default --variant $FU
run l3-qlora 90 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 4096 --tool tuner $B --variant default --variant $BOTH
grep -h -E "Error|error:" "$OUT"/logs/*.log | grep -v '"error": null' | grep -v liger_kernel.ops.backends | sort | uniq -c | head -20
python3 bench/bench_train.py --report "$F"
for f in "$OUT"/profiles/*.txt; do sed -n 1,3p "$f"; done
tar -C "$OUT" -czf "$OUT/profiles.tar.gz" profiles && rm -rf "$OUT/profiles" "$OUT/profiled.json"*; rm -f "$OUT"/*.lock
