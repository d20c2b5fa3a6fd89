#!/usr/bin/env bash
# The documented Fashion-MNIST run of issue #6: does a small ImageGPT trained on 54,000
# unlabelled Fashion-MNIST images learn features a linear classifier can use better than
# raw pixels, and at which layer?
#
#   prepare: 14x14 images (the 28x28 originals bilinearly halved), 16-colour k-means palette
#            (the 256 grey levels quantised; PSNR about 37 dB), 54,000 / 6,000 / 10,000
#   train:   6 layers, n_embd 256, 8 heads (4.8 M parameters), GPT objective,
#            2,400 steps (lr 1.5e-3, cosine to 1.5e-4) of batches of 32 images
#            (76,800 images, about 1.4 epochs)
#   probe:   every layer's mean-pooled normalised hidden state -> L2 logistic regression
#            (lambda on val), beside the raw-pixel logistic regression, and the 5 layers
#            around the best one side by side (--concat 5, as the paper's ImageNet result)
#
# About 77 minutes of training (1.9 s/step) on 2 CPU cores; the probe then takes about 30 min
# for the features and 2 for the fits (86 preconditioned L-BFGS fits on 9 paths, all
# converged). Needs the
# Debian package dataset-fashion-mnist, or add --download to the prepare line.
#
# Resumable: the data is prepared once, training runs in chunks of 600 steps (--stop-after,
# then --resume: the same batches and model as one run), and the probe runs when training is
# done; run the script again after an interruption.
set -euo pipefail
OUT=${1:-runs/fashion-mnist}
IGPT=${IGPT:-cargo run --release --quiet --}
STEPS=2400 CHUNK=600
[ -f "$OUT/data/prepare.json" ] || $IGPT prepare --data fashion-mnist --out "$OUT/data" --size 14 --colors 16
TRAIN=(train --data "$OUT/data" --out "$OUT/train" --n-layer 6 --n-embd 256 --n-head 8
  --batch 32 --steps $STEPS --lr 1.5e-3 --warmup 100 --min-lr 1.5e-4
  --eval-every 300 --eval-batches 8 --log-every 50 --seed 0)
while [ ! -f "$OUT/train.json" ]; do
  done_steps=0 resume=()
  if [ -d "$OUT/train/checkpoints" ] && ls "$OUT/train/checkpoints" | grep -q '^step-'; then
    done_steps=$(ls "$OUT/train/checkpoints" | sed -n 's/^step-\([0-9]*\)$/\1/p' | sort -n | tail -1)
    resume=(--resume)
  fi
  next=$(( (done_steps / CHUNK + 1) * CHUNK ))
  if [ "$next" -ge "$STEPS" ]; then
    $IGPT "${TRAIN[@]}" "${resume[@]}" --json > "$OUT/train.json.tmp" && mv "$OUT/train.json.tmp" "$OUT/train.json"
  else
    $IGPT "${TRAIN[@]}" "${resume[@]}" --stop-after "$next"
  fi
done
[ -f "$OUT/probe/probe.json" ] || $IGPT probe --model "$OUT/train/best" --data "$OUT/data" --out "$OUT/probe" --concat 5
