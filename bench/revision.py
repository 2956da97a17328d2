"""Another git revision's code for a benchmark's baseline: its tree exported (``git archive``),
for a child process to import stx_platform from (``PYTHONPATH=<tree>``)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_tree(rev: str, dest: str) -> str:
    """Write revision ``rev``'s tracked files under ``dest``/<rev>; returns that folder."""
    out = os.path.join(dest, rev.replace("/", "_"))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out
