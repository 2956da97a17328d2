"""Generate the embedded synthetic default data (HEST-1k layout + a PanNuke-format fold).

Thin wrapper for ``ray job submit --working-dir . -- python jobs/synth.py [stx synth options]``;
the same as ``stx synth ...`` followed by ``stx synth-pannuke``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stx_platform.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    rc = main(["synth", *argv])
    if rc == 0 and "--out" not in argv:
        rc = main(["synth-pannuke"])
    sys.exit(rc)
