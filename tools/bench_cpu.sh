#!/usr/bin/env bash
# igpt against the PyTorch reference on this CPU, pairs run back to back (the numbers of the
# README's benchmark table and of the portable-speed work):
#   tools/bench_cpu.sh [OUT.txt]
# For every kernel set this CPU has (IGPT_KERNELS) and the PyTorch reference, in ROUNDS
# alternating rounds: forward (batch 4), training (batch 4) and f32 sampling (batch 8) at
# E=256, 8 layers, 8 heads, 32x32, 512 colours, 2 threads; then one profiled run of each mode.
# The portable set is timed on one forward step only (it is the fallback, not a fast path).
# IGPT_BEFORE=path/to/old/igpt adds an older binary to the rounds.
# Needs the reference venv (../shared/bench/setup-ref-venv.sh); PY and REF override where.
set -euo pipefail
OUT=${1:-/dev/stdout}
ROUNDS=${ROUNDS:-2}
# shellcheck source=tools/bench_lib.sh
. "$(dirname "$0")/bench_lib.sh"
{ lscpu | grep -E 'Model name|^CPU family|^Model:|^CPU\(s\)'; grep -q avx512f /proc/cpuinfo && echo "AVX-512: yes" || echo "AVX-512: no"; } | tee -a "$OUT"
"$IGPT" info | tee -a "$OUT"
sets=$("$IGPT" info --json | python3 -c 'import json,sys; print(" ".join(s for s in json.load(sys.stdin)["engine"]["kernels_available"] if s != "portable"))')
for round in $(seq "$ROUNDS"); do
  for mode in forward train sample; do
    for set in $sets; do
      run "r$round igpt $set $mode" env IGPT_KERNELS="$set" "$IGPT" bench "$mode"
    done
    if [ -n "${IGPT_BEFORE:-}" ]; then run "r$round before $mode" "$IGPT_BEFORE" bench "$mode"; fi
    run "r$round torch $mode" "$PY" "$REF" "$mode"
  done
done
run "igpt portable forward (1 step)" env IGPT_KERNELS=portable "$IGPT" bench forward --steps 1 --warmup 0
for mode in forward train sample; do
  echo "--- profile: igpt $mode" | tee -a "$OUT"
  "$IGPT" bench "$mode" --profile 2>&1 | tail -8 | tee -a "$OUT"
  if [ -n "${IGPT_BEFORE:-}" ]; then
    echo "--- profile: before $mode" | tee -a "$OUT"
    "$IGPT_BEFORE" bench "$mode" --profile 2>&1 | tail -8 | tee -a "$OUT"
  fi
done
