"""Train CellViT on a built dataset with Ray Train, validating on a PanNuke fold every epoch.

    python jobs/train.py                                  # local Ray; tiny CPU preset unless a GPU is found
    python jobs/train.py --preset cellvit --set num_workers=4 --dataset s3://bucket/ds --storage s3://bucket/runs
    ray job submit --working-dir . -- python jobs/train.py --dataset s3://bucket/ds --validation s3://bucket/pannuke/fold3
    python jobs/train.py --resume --name RUN              # continue a stopped run from its last checkpoint

The same as ``stx train ...`` (see ``stx train --help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stx_platform.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
