"""The paper's experiments: Table 2 (segmentation of held-out organs, ST model vs PanNuke model)
and Table 3 (nucleus classification, label methods and both models).

    python jobs/experiment.py table2                      # embedded default; cpu preset unless a GPU is found
    python jobs/experiment.py table3 --out stx-data/experiment   # reuses table2's models
    ray job submit --working-dir . -- python jobs/experiment.py table2 --source s3://bucket/hest \
        --out s3://bucket/experiment --pannuke-train s3://bucket/pannuke/fold1 --validation s3://bucket/pannuke/fold2

The same as ``stx experiment ...`` (see ``stx experiment table2 --help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stx_platform.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["experiment", *sys.argv[1:]]))
