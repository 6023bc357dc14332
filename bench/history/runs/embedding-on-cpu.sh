#!/usr/bin/env bash
# Device run (carry [".whl"]), prepared in session 4 and not yet run: the memory-target rows with the
# frozen input embedding's table in host memory (TUNER_EMBEDDING_ON_CPU=auto: when every layer is
# checkpointed), beside the same rows without it, and its GPU test. Results: $OUT/<date>-embedding.json.
set -u
source bench/runs/lib.sh
timeout 90 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_gpu_train.py -k embedding > "$OUT/logs/gpu-embedding-test.log" 2>&1
grep -E "peak off|passed|failed" "$OUT/logs/gpu-embedding-test.log" | tail -3
F="$OUT/$(date +%F)-embedding.json"
B="--steps 6 --warmup 2 --in-process --out $F"
V="--variant lean-memory:env.TUNER_CHECKPOINT_LAYERS=all --variant offload:env.TUNER_CHECKPOINT_LAYERS=offload"
V="$V --variant lean-embedding:env.TUNER_CHECKPOINT_LAYERS=all,env.TUNER_EMBEDDING_ON_CPU=auto"
V="$V --variant offload-embedding:env.TUNER_CHECKPOINT_LAYERS=offload,env.TUNER_EMBEDDING_ON_CPU=auto"
run l2 240 python3 bench/bench_train.py --shape llama2-7b --method qlora --seq 4096 --tool tuner $B $V
run l3 240 python3 bench/bench_train.py --shape llama3-8b --method qlora --seq 2048 --tool tuner $B $V
python3 bench/bench_train.py --report "$F"
rm -f "$OUT"/*.lock
