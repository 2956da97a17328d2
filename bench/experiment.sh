#!/usr/bin/env bash
# The paper's Table 2 and Table 3 on the embedded default with the CPU preset, timed: `stx experiment
# table2` generates and builds the 4 synthetic slides, holds one organ out (lung: the default
# source has none of the paper's held-out organs, so the last in name order), trains the ST model on
# the other three and the PanNuke model on a synthetic PanNuke fold with the same preset and number
# of samples, and scores both on the held-out slide's patches; `table3` reuses both models. With
# NUCLS present both models are also scored on the 15 real NuCLS breast tiles.
#
#     bash bench/experiment.sh                 # ~23 min on 2 cores (22 for table2)
#     PRESET=tiny bash bench/experiment.sh     # the 2-minute demo preset, for comparison
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
PRESET=${PRESET:-cpu}
OUT=${OUT:-stx-data/bench-experiment-$PRESET}
NUCLS=${NUCLS:-../shared/data/real/nucls_breast}
mkdir -p "$OUT"

for table in table2 table3; do
  t0=$(date +%s)
  $PY -m stx_platform.cli experiment "$table" --preset "$PRESET" --out "$OUT" --mlflow "sqlite:///$OUT/mlflow.db" \
    > "$OUT/$table.log" 2>&1 || { tail -30 "$OUT/$table.log"; exit 1; }
  grep -E "^(held out|ST model: training|PanNuke model: training)|epoch [0-9]+/" "$OUT/$table.log" || true
  echo "stx experiment $table --preset $PRESET: $(( $(date +%s) - t0 )) s"
  cat "$OUT/$table.md"
  echo
done

if [ -d "$NUCLS" ]; then
  for model in st pannuke; do
    ckpt=$($PY -c "import json,sys; d=json.load(open('$OUT/experiment.json'))['models']; \
print(d['ST model' if '$model' == 'st' else 'PanNuke model']['checkpoint'])")
    $PY -m stx_platform.cli evaluate --checkpoint "$ckpt" --tiles "$NUCLS" --type-names Non-Tumor,Neoplastic \
      --out "$OUT/nucls-$model" --overlays 3 --device cpu 2>&1 \
      | grep -E "^(bPQ|dice|f1|precision|recall) " | sed "s/^/  NuCLS real tiles, $model model: /"
  done
else
  echo "($NUCLS not found: no real-tile figures)"
fi
