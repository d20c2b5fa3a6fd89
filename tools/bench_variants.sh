#!/usr/bin/env bash
# The cost of the architecture options against dense attention and PyTorch, one session,
# runs back to back (E=256, 8 layers, 8 heads, 512 colours, 2 threads):
#   tools/bench_variants.sh [OUT.txt]
# Training (batch 4 at side 32, batch 1 at side 64) for dense and local_2d (8 x 8 window),
# learned_2d and rope_2d against learned_1d at side 32, sampling at batch 8 (side 64: a
# shorter run of 1024 steps is timed in full by `bench sample`), and torch_ref.py
# --attention local_2d (SDPA with a boolean mask) at side 64.
set -euo pipefail
OUT=${1:-/dev/stdout}
STEPS=${STEPS:-3}
# shellcheck source=tools/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"
T="--steps $STEPS --warmup 1"
run "train side 32 dense" "$IGPT" bench train $T
run "train side 32 local_2d" "$IGPT" bench train $T --attention local_2d
run "train side 32 learned_2d" "$IGPT" bench train $T --position-embedding learned_2d
run "train side 32 rope_2d" "$IGPT" bench train $T --position-embedding rope_2d
run "train side 64 dense B=1" "$IGPT" bench train $T --side 64 --batch 1
run "train side 64 local_2d B=1" "$IGPT" bench train $T --side 64 --batch 1 --attention local_2d
run "train side 32 local_2d B=1" "$IGPT" bench train $T --batch 1 --attention local_2d
run "torch train side 64 local_2d B=1" "$PY" "$REF" train --side 64 --batch 1 --attention local_2d --steps "$STEPS" --warmup 1
run "torch train side 64 dense B=1" "$PY" "$REF" train --side 64 --batch 1 --steps "$STEPS" --warmup 1
run "sample side 64 dense B=8" "$IGPT" bench sample --side 64
run "sample side 64 local_2d B=8" "$IGPT" bench sample --side 64 --attention local_2d
