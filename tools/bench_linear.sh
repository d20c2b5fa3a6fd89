#!/usr/bin/env bash
# Linear attention against dense attention and PyTorch, one session, programs alternating in
# rounds (E=256, 8 layers, 8 heads, 512 colours, 2 threads):
#   tools/bench_linear.sh [OUT.txt]
# Training at side 32 (batch 4) and side 64 (batch 1) for igpt linear, igpt dense and
# torch_ref.py --attention linear|dense; sampling at batch 8 for linear at sides 16, 32 and 64
# and dense at side 32 (tokens/s and peak RSS).
set -euo pipefail
OUT=${1:-/dev/stdout}
STEPS=${STEPS:-3}
ROUNDS=${ROUNDS:-2}
# shellcheck source=tools/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"
T="--steps $STEPS --warmup 1"
for r in $(seq "$ROUNDS"); do
  run "r$r train side 32 B=4 linear" "$IGPT" bench train $T --attention linear
  run "r$r torch train side 32 B=4 linear" "$PY" "$REF" train --attention linear --steps "$STEPS" --warmup 1
  run "r$r train side 32 B=4 dense" "$IGPT" bench train $T
  run "r$r torch train side 32 B=4 dense" "$PY" "$REF" train --steps "$STEPS" --warmup 1
  run "r$r train side 64 B=1 linear" "$IGPT" bench train $T --side 64 --batch 1 --attention linear
  run "r$r train side 64 B=1 dense" "$IGPT" bench train $T --side 64 --batch 1
  run "r$r torch train side 64 B=1 linear" "$PY" "$REF" train --side 64 --batch 1 --attention linear --steps "$STEPS" --warmup 1
  for side in 16 32 64; do
    run "r$r sample side $side B=8 linear" "$IGPT" bench sample --side "$side" --attention linear
  done
  run "r$r sample side 32 B=8 dense" "$IGPT" bench sample --side 32
done
