#!/usr/bin/env bash
# Does a model trained on a laptop CPU learn? Builds the embedded default, trains `--preset cpu`
# (and, with BASELINE=1, `--preset tiny` for comparison) on it, and scores each model on the
# synthetic PanNuke fold (per-epoch validation, printed by stx train) and on the real NuCLS breast
# tiles when ../shared/data/real is present. Every figure is printed with the wall time behind it.
#
#     bash bench/cpu_preset.sh                 # ~16 min on 2 cores (build, 6 epochs of 771 patches, NuCLS)
#     BASELINE=1 bash bench/cpu_preset.sh      # + the tiny preset (~3 min more)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
OUT=${OUT:-stx-data/bench-cpu-preset}
NUCLS=${NUCLS:-../shared/data/real/nucls_breast}
mkdir -p "$OUT"

t0=$(date +%s)
$PY jobs/build_dataset.py --out "$OUT/dataset" > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
echo "build of the embedded default: $(( $(date +%s) - t0 )) s ($(grep -o '[0-9]* done' "$OUT/build.log" | tail -1))"

presets="cpu"
[ "${BASELINE:-0}" = 1 ] && presets="tiny cpu"
for preset in $presets; do
  t0=$(date +%s)
  $PY jobs/train.py --preset "$preset" --dataset "$OUT/dataset" --storage "$OUT/runs" --name "$preset" \
    --mlflow "sqlite:///$OUT/mlflow.db" 2>&1 | tee "$OUT/train-$preset.log" | grep -E "^stx train|epoch [0-9]" || true
  echo "preset $preset: trained in $(( $(date +%s) - t0 )) s (build not included)"
  if [ -d "$NUCLS" ]; then
    $PY -m stx_platform.cli evaluate --checkpoint "$OUT/runs/$preset" --tiles "$NUCLS" \
      --type-names Non-Tumor,Neoplastic --out "$OUT/nucls-$preset" --overlays 3 --device cpu 2>&1 \
      | grep -E "^(bPQ|dice|f1|precision|recall|round_trip_bPQ) " | sed "s/^/  NuCLS real tiles, $preset: /"
  else
    echo "  ($NUCLS not found: no real-tile figures)"
  fi
done
