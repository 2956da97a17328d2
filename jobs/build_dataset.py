"""Build a training dataset: label and patch every slide of a source on Ray.

    python jobs/build_dataset.py                          # local Ray, embedded synthetic default
    ray job submit --working-dir . -- python jobs/build_dataset.py --source s3://bucket/hest --out s3://bucket/ds

The same as ``stx build ...`` (see ``stx build --help``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stx_platform.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
