#!/usr/bin/env bash
# The architecture study (issue #15): does a 2D position code help a pixel model, what do
# local and linear attention cost or gain against dense attention at equal compute, and is a
# higher resolution worth it? Every variant of a data set trains the same model size for the
# same steps (the same tokens) with the same seed; then its test bits/token, its linear probes
# (every layer and the concatenation around the best), a sample grid; then short benchmarks
# of every trained variant (train and sampling tokens/s, peak memory at batch 8), run back
# to back in their own part so that they compare (give them a quiet machine).
#
#   tools/architecture_study.sh [PART ...]     PART: emoji32 fashion emoji64 bench report
#                                              (default: all of them, in that order)
#
# Environment: OUT (runs/study), REPORT (docs/results), the model and budget below, LOG_EVERY, LIMIT
# (prepare only the first N images of each split: a quick dry run), E32 / F28 / E64 (the
# variants, as attention+position_embedding), BEST32 (those on emoji64's images at 32x32), PROBE28 (Fashion-MNIST's probe images per split), SIDE32 (emoji32's side, for a dry run),
# REBENCH=1 (the bench part measures again what it measured before).
#
# Resumable part by part: a stage whose output exists is skipped, and training runs in chunks
# of $CHUNK_EVALS evaluations (--stop-after, then --resume), so a session that ends mid-run continues
# where it stopped (the resumed run equals an uninterrupted one bit for bit). The report
# (`igpt study`) reads whatever runs exist and writes docs/results/architectures.{md,json}
# and the charts; cells of runs not done yet are marked as missing.
#
# Budget (state it with the results): model $LAYERS layers x $EMBD wide x $HEADS heads; batch
# $BATCH; emoji32 and emoji64 see the same number of training tokens ($STEPS32 x 1,024 =
# $STEPS64 x 4,096 per image slot), Fashion-MNIST $STEPS28 steps at 784 tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study}
IGPT=${IGPT:-target/release/igpt}
LAYERS=${LAYERS:-4} EMBD=${EMBD:-128} HEADS=${HEADS:-4} BATCH=${BATCH:-8}
STEPS32=${STEPS32:-1500} STEPS28=${STEPS28:-1500} STEPS64=${STEPS64:-375}
# Fashion-MNIST's probes see the first 10,000 images of each split (stratified): all of the
# 6,000 val and 10,000 test images, a fifth of the training images (the features of all
# 70,000 would take longer than training)
PROBE28=${PROBE28:-10000}
# emoji32's side (32; smaller only for a quick dry run)
SIDE32=${SIDE32:-32}
CHUNK_EVALS=${CHUNK_EVALS:-2}
LOG_EVERY=${LOG_EVERY:-25}
EMOJI64=${EMOJI64:-../shared/data/emoji64}
REPORT=${REPORT:-docs/results}
LIMIT_FLAG=${LIMIT:+--limit $LIMIT}
PARTS=${*:-emoji32 fashion emoji64 bench report}
[ -x "$IGPT" ] || cargo build --release
mkdir -p "$OUT"

# variant name -> the flags that make it
flags() {
  local attention=${1%%+*} positions=${1#*+}
  echo "--attention $attention --position-embedding $positions"
}

# prepare NAME ARGS...: a prepared folder under $OUT/data (once)
prepare() {
  local name=$1
  shift
  [ -f "$OUT/data/$name/prepare.json" ] || $IGPT prepare "$@" --out "$OUT/data/$name" $LIMIT_FLAG > /dev/null
}

# run DATASET DATA VARIANT STEPS [PROBE_LIMIT]: train (in chunks), test NLL, probes (on at
# most PROBE_LIMIT images of each split), samples
run() {
  local dataset=$1 data=$OUT/data/$2 variant=$3 steps=$4 probe_limit=${5:+--limit $5}
  local dir=$OUT/$dataset/$variant
  mkdir -p "$dir"
  local train=(train --data "$data" --out "$dir/train" --n-layer "$LAYERS" --n-embd "$EMBD" --n-head "$HEADS"
    --batch "$BATCH" --steps "$steps" --lr 2e-3 --warmup $((steps / 20)) --min-lr 2e-4
    --eval-every $((steps / 10)) --eval-batches 16 --log-every "$LOG_EVERY" --seed 0 $(flags "$variant"))
  while [ ! -f "$dir/train.json" ]; do
    local done_steps=0 resume=()
    if [ -d "$dir/train/checkpoints" ] && ls "$dir/train/checkpoints" | grep -q '^step-'; then
      done_steps=$(ls "$dir/train/checkpoints" | sed -n 's/^step-\([0-9]*\)$/\1/p' | sort -n | tail -1)
      resume=(--resume)
    fi
    # chunks end on an evaluation (where a checkpoint is written)
    local chunk=$(( steps / 10 * CHUNK_EVALS ))
    local next=$(( (done_steps / chunk + 1) * chunk ))
    if [ "$next" -ge "$steps" ]; then
      $IGPT "${train[@]}" "${resume[@]}" --json > "$dir/train.json.tmp" && mv "$dir/train.json.tmp" "$dir/train.json"
    else
      $IGPT "${train[@]}" "${resume[@]}" --stop-after "$next" --json > /dev/null
    fi
  done
  local best=$dir/train/best
  [ -f "$dir/test.json" ] || { $IGPT eval --model "$best" --data "$data" --split test --json > "$dir/test.json.tmp" && mv "$dir/test.json.tmp" "$dir/test.json"; }
  [ -f "$dir/probe/probe.json" ] || $IGPT probe --model "$best" --data "$data" --out "$dir/probe" --concat 3 $probe_limit > /dev/null
  [ -f "$dir/samples.json" ] || { $IGPT sample --model "$best" --num 16 --out "$dir/samples.png" --json > "$dir/samples.json.tmp" && mv "$dir/samples.json.tmp" "$dir/samples.json"; }
}

# bench DIR SIDE COLORS VARIANT: train and sampling tokens/s and peak memory at batch 8, on
# random weights of the run's shape
bench() {
  local dir=$1 side=$2 colors=$3 variant=$4
  local shape=(--n-layer "$LAYERS" --n-embd "$EMBD" --n-head "$HEADS" --side "$side" --colors "$colors" $(flags "$variant"))
  [ -z "${REBENCH:-}" ] || rm -f "$dir/bench_train.json" "$dir/bench_sample.json"
  [ -f "$dir/bench_train.json" ] || { $IGPT bench train "${shape[@]}" --batch "$BATCH" --steps 6 --warmup 2 --json > "$dir/bench_train.json.tmp" && mv "$dir/bench_train.json.tmp" "$dir/bench_train.json"; }
  [ -f "$dir/bench_sample.json" ] || { $IGPT bench sample "${shape[@]}" --batch 8 --steps 1 --warmup 0 --json > "$dir/bench_sample.json.tmp" && mv "$dir/bench_sample.json.tmp" "$dir/bench_sample.json"; }
}

# bench_all: the benchmarks of every variant trained so far, back to back
bench_all() {
  local dataset side colors variants variant
  while read -r dataset side colors variants; do
    for variant in $variants; do
      [ ! -f "$OUT/$dataset/$variant/train.json" ] || bench "$OUT/$dataset/$variant" "$side" "$colors" "$variant"
    done
  done <<LIST
emoji32 $SIDE32 256 $E32
fashion-mnist 28 16 $F28
emoji64 64 256 $E64
emoji64-at-32 32 256 $BEST32
LIST
}

E32=${E32:-"dense+learned_1d dense+learned_2d dense+rope_2d local_2d+learned_2d local_2d+rope_2d linear+learned_1d linear+learned_2d"}
F28=${F28:-"dense+learned_1d dense+learned_2d local_2d+learned_2d linear+learned_2d"}
E64=${E64:-"dense+learned_1d local_2d+learned_2d linear+learned_2d"}
# the resolution question: emoji64's images at 32x32, with local_2d+learned_2d (the
# architecture of a 64x64 run: the same model at both sizes) and local_2d+rope_2d (the best
# variant on emoji32)
BEST32=${BEST32:-"local_2d+learned_2d local_2d+rope_2d"}

PQ="parquet:$EMOJI64/train.parquet,$EMOJI64/test.parquet"
for part in $PARTS; do
  case $part in
    emoji32)
      prepare emoji32 --data emoji32 --size "$SIDE32" --colors 256
      for v in $E32; do run emoji32 emoji32 "$v" "$STEPS32"; done ;;
    fashion)
      prepare fashion28 --data fashion-mnist --size 28 --colors 16
      for v in $F28; do run fashion-mnist fashion28 "$v" "$STEPS28" "$PROBE28"; done ;;
    emoji64)
      prepare emoji64 --data "$PQ" --size 64 --colors 256
      for v in $E64; do run emoji64 emoji64 "$v" "$STEPS64"; done
      # the resolution question: the same images at 32x32
      prepare emoji64-at-32 --data "$PQ" --size 32 --colors 256
      for v in $BEST32; do run emoji64-at-32 emoji64-at-32 "$v" "$STEPS32"; done ;;
    bench) bench_all ;;
    report)
      budget="Budget: model $LAYERS layers x $EMBD wide x $HEADS heads, batch $BATCH, seed 0; emoji32 $STEPS32 steps (1,024 tokens an image), Fashion-MNIST $STEPS28 steps (784; its probes on at most $PROBE28 images of each split), emoji64 $STEPS64 steps (4,096): emoji32 and emoji64 see the same training tokens. Train and sampling tokens/s from \`igpt bench\` on the same shape (2 CPU cores)."
      $IGPT study --runs "$OUT" --out "$REPORT" --budget "$budget" ;;
    *) echo "unknown part $part (emoji32 fashion emoji64 bench report)" >&2; exit 2 ;;
  esac
done
