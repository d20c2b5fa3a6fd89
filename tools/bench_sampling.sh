#!/usr/bin/env bash
# Sampling throughput of igpt against the PyTorch reference, pairs run back to back on one
# machine (the numbers of the README's benchmark table):
#   tools/bench_sampling.sh [OUT.txt]
# For each shape and batch: igpt in f32 (exact), igpt with the f16 cache and f16 decoding
# weights, igpt with the int8 cache and f16 weights, the plain PyTorch KV-cache loop
# (torch_ref.py sample) and transformers' generate() (torch_ref.py hf-generate), in rounds
# that alternate the programs so that a change of machine load hits all of them.
# Needs the reference venv (../shared/bench/setup-ref-venv.sh); PY and REF override where.
set -euo pipefail
OUT=${1:-/dev/stdout}
ROUNDS=${ROUNDS:-2}
# shellcheck source=tools/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"
shapes=(
  "E=256/8 layers (default)|--n-embd 256 --n-layer 8 --n-head 8 --side 32"
  "small fixture (E=64/3 layers)|--n-embd 64 --n-layer 3 --n-head 4 --side 32"
  "preset s (E=512/24 layers, 16x16)|--n-embd 512 --n-layer 24 --n-head 8 --side 16"
)
for entry in "${shapes[@]}"; do
  name=${entry%%|*}; flags=${entry#*|}
  for batch in 8 1; do
    for round in $(seq "$ROUNDS"); do
      # shellcheck disable=SC2086
      run "$name B=$batch r$round igpt f32" "$IGPT" bench sample $flags --batch $batch
      run "$name B=$batch r$round igpt f16 cache+f16 weights" "$IGPT" bench sample $flags --batch $batch --kv-cache f16 --weights f16
      run "$name B=$batch r$round igpt int8 cache+f16 weights" "$IGPT" bench sample $flags --batch $batch --kv-cache int8 --weights f16
      run "$name B=$batch r$round torch sample" "$PY" "$REF" sample $flags --batch $batch
    done
    run "$name B=$batch hf generate" "$PY" "$REF" hf-generate $flags --batch $batch
  done
done
