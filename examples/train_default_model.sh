#!/usr/bin/env bash
# Reproduce sdlite's built-in default model from scratch with sdlite's own commands (2 CPU cores:
# under an hour). Data -> random `shapes` architecture -> VAE -> UNet + text encoder (jointly, with
# caption dropout for guidance, EMA) -> export into the package.
# A stage whose output is complete in WORK_DIR is not redone: delete WORK_DIR for a fresh run.
# usage: examples/train_default_model.sh [WORK_DIR] [SDLITE_BINARY] [EXPORT_DIR]
#   EXPORT_DIR (default sdlite/default_model) receives the finished model, as shipped in the package.
set -euo pipefail
WORK=${1:-build/default-model}
SDLITE=${2:-sdlite}
EXPORT=${3:-sdlite/default_model}
STEPS=50      # the sampler settings the model recommends (sdlite.json); chosen with `sdlite eval shapes`
GUIDANCE=5.0
export HF_HUB_OFFLINE=1
mkdir -p "$WORK"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

stamp "dataset"
[ -f "$WORK/data/metadata.jsonl" ] || "$SDLITE" data shapes "$WORK/data" --n 10000 --size 64 --seed 0
stamp "random shapes architecture"
[ -f "$WORK/vae/sdlite-train.json" ] || "$SDLITE" init "$WORK/base" --preset shapes --seed 0 --force
stamp "autoencoder"
[ -f "$WORK/vae/sdlite-train.json" ] || "$SDLITE" train --component vae --model "$WORK/base" --data "$WORK/data" --out "$WORK/vae" \
  --max-steps 1200 --batch-size 16 --lr 1e-3 --lr-scheduler cosine --warmup-steps 50 --seed 0 --quiet
stamp "denoiser + text encoder"
[ -f "$WORK/final/sdlite-train.json" ] || "$SDLITE" train --model "$WORK/vae" --data "$WORK/data" --out "$WORK/final" \
  --max-steps 4200 --batch-size 32 --lr 5e-4 --lr-scheduler cosine --warmup-steps 200 --seed 0 \
  --train-text-encoder --caption-dropout 0.1 --ema --ema-decay 0.999 --cache \
  --checkpoint-every 500 --keep-checkpoints 1 --quiet
stamp "export to $EXPORT"
rm -rf "$EXPORT.tmp" && mkdir -p "$EXPORT.tmp"
for item in model_index.json scheduler tokenizer text_encoder unet vae sdlite-train.json; do
  cp -rL "$WORK/final/$item" "$EXPORT.tmp/"
done
printf '{"defaults": {"steps": %s, "guidance": %s, "scheduler": "ddim"}}\n' "$STEPS" "$GUIDANCE" >"$EXPORT.tmp/sdlite.json"
rm -rf "$EXPORT" && mv "$EXPORT.tmp" "$EXPORT"
stamp "done: $EXPORT ($(du -sh "$EXPORT" | cut -f1))"
