#!/usr/bin/env bash
# GPU readiness in about 5 minutes on one GPU: ViT-256 CellViT forward + backward images/s in fp32
# and fp16 with peak GPU memory (bench/model.py), then STEPS training steps of the cellvit preset
# from the embedded default through `stx train` (build included), each figure printed as it comes.
#
#     bash bench/gpu_check.sh                      # on a machine with a CUDA GPU
#     DEVICE=cpu CONFIG=tiny STEPS=8 BATCH=2 bash bench/gpu_check.sh   # the same steps on a CPU (a dry run)
#
# Writes under ${OUT:-stx-data/gpu-check}: the built dataset, the run (checkpoints, validation) and
# timings.txt with the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-vit256}
STEPS=${STEPS:-200}
BATCH=${BATCH:-16}
OUT=${OUT:-stx-data/gpu-check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
log() { echo "$*" | tee -a "$OUT/timings.txt"; }
: > "$OUT/timings.txt"

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/timings.txt"
  $PY -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
fi

log "== forward + backward, $CONFIG, batch $BATCH, fp32 then fp16 autocast"
$PY bench/model.py --device "$DEVICE" --configs "$CONFIG" --batches "$BATCH" --iters 10 --warmup 3 | tee -a "$OUT/timings.txt"
$PY bench/model.py --device "$DEVICE" --configs "$CONFIG" --batches "$BATCH" --iters 10 --warmup 3 --amp | tee -a "$OUT/timings.txt"

log "== build the embedded default"
t0=$(date +%s)
$PY jobs/build_dataset.py --out "$OUT/dataset" > "$OUT/build.log" 2>&1 \
  || { tail -20 "$OUT/build.log"; exit 1; }
patches=$($PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(sum(s['patches'] for s in d['slides'] if s['status']=='done'))" "$OUT/dataset/manifest.json")
log "built $patches patches in $(( $(date +%s) - t0 )) s"

samples=$(( STEPS * BATCH ))
epochs=$(( (samples + patches - 1) / patches ))
per_epoch=$(( (samples + epochs - 1) / epochs ))
log "== about $STEPS training steps of batch $BATCH ($epochs epoch(s) of $per_epoch of $patches patches), preset cellvit, model $CONFIG"
t0=$(date +%s)
use_gpu=$([ "$DEVICE" = cuda ] && echo true || echo false)
$PY jobs/train.py --preset cellvit --dataset "$OUT/dataset" --storage "$OUT/runs" --name gpu-check \
  --mlflow "sqlite:///$OUT/mlflow.db" \
  --set model="$CONFIG" --set epochs="$epochs" --set samples_per_epoch="$per_epoch" --set batch_size="$BATCH" \
  --set freeze_encoder_epochs=0 --set use_gpu="$use_gpu" --set val_images=32 --set overlays=2 2>&1 \
  | tee "$OUT/train.log" | grep -E "epoch|error|Error" || true
[ "${PIPESTATUS[0]}" -eq 0 ] || { tail -30 "$OUT/train.log"; exit 1; }
secs=$(( $(date +%s) - t0 ))
log "trained in $secs s: $(awk -v n="$samples" -v s="$secs" 'BEGIN { printf "%.1f", n / (s > 0 ? s : 1) }') images/s end to end (Ray start-up and validation included)"
log "figures: $OUT/timings.txt"
