#!/usr/bin/env bash
# Device run 1 of session 5 (carry [".whl"]): attention kernels on this GPU; the embedding-in-host-
# memory GPU test and rows again, now that the lookup takes the batch's host copy of the ids (no
# device read-back); a torch.profiler breakdown of a default (CUDA-graphed) Llama-2 QLoRA 4096 step
# with and without lean step bookkeeping, and the same two unprofiled.
set -u
source bench/runs/lib.sh
D=$(date +%F)
run attention 120 python3 bench/attention_kernels.py --out "$OUT/$D-attention.json"
timeout 120 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k embedding > "$OUT/logs/gpu-embedding-test.log" 2>&1
grep -E "peak off|passed|failed" "$OUT/logs/gpu-embedding-test.log" | tail -3
F="$OUT/$D-embedding2.json"
B="--steps 6 --warmup 2 --in-process --out $F"
V="--variant lean-memory:env.TUNER_CHECKPOINT_LAYERS=all --variant lean-embedding:env.TUNER_CHECKPOINT_LAYERS=all,env.TUNER_EMBEDDING_ON_CPU=auto"
V="$V --variant offload:env.TUNER_CHECKPOINT_LAYERS=offload --variant offload-embedding:env.TUNER_CHECKPOINT_LAYERS=offload,env.TUNER_EMBEDDING_ON_CPU=auto"
run l2 200 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner $B $V
run l3 200 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 2048 --tool tuner $B $V
python3 bench/bench_train.py --report "$F"
S="$OUT/$D-speed.json"
P="--variant default --variant lean:env.TUNER_STEP_OVERHEAD=lean"
run profile 150 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner --steps 4 --warmup 3 --in-process --out "$OUT/profiled.json" --profile "$OUT/profiles" --profile-cuda $P
run speed 120 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner --steps 10 --warmup 3 --in-process --out "$S" $P
python3 bench/bench_train.py --report "$S"
rm -f "$OUT"/*.lock "$OUT/profiled.json"
tar czf "$OUT/logs.tgz" -C "$OUT" logs profiles && rm -rf "$OUT/logs" "$OUT/profiles"
