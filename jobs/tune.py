"""Ray Tune sweep over label hyperparameters: each trial relabels the dataset from the stage
caches and trains CellViT on it, scored on a PanNuke fold; MLflow holds a parent run per sweep
and a nested run per trial.

    python jobs/tune.py --set num_samples=4               # local Ray, tiny model on CPU
    python jobs/tune.py --config sweep.yaml --preset cellvit --dataset s3://bucket/ds --storage s3://bucket/sweeps
    ray job submit --working-dir . -- python jobs/tune.py --dataset s3://bucket/ds --validation s3://bucket/pannuke/fold3
    python jobs/tune.py --resume --name SWEEP             # continue an interrupted sweep

The same as ``stx tune ...`` (see ``stx tune --help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stx_platform.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
