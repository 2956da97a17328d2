"""Generate the embedded synthetic default data (HEST-1k layout + a PanNuke-format fold).

    python jobs/synth.py                                  # stx-data/hest and stx-data/pannuke, local processes
    ray job submit --working-dir . -- python jobs/synth.py --out s3://bucket/stx/hest --slides 24 --cells 150000 \
        --pannuke-out s3://bucket/stx/pannuke/fold3       # one Ray task per slide on the cluster

The same as ``stx synth ...`` (with ``--pannuke-out stx-data/pannuke`` when neither --out nor --pannuke-out
is given).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stx_platform.cli import DEFAULT_PANNUKE_OUT, main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv and "--pannuke-out" not in argv:
        argv += ["--pannuke-out", DEFAULT_PANNUKE_OUT]
    sys.exit(main(["synth", *argv]))
