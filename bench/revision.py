"""Another git revision's code for a benchmark's baseline: its tree exported (``git archive``),
for a child process to import stx_platform from (``PYTHONPATH=<tree>``), or one of its modules
loaded beside this checkout's."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from types import ModuleType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_tree(rev: str, dest: str) -> str:
    """Write revision ``rev``'s tracked files under ``dest``/<rev>; returns that folder."""
    out = os.path.join(dest, rev.replace("/", "_"))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(out, filter="data")
    return out


def module_at(rev: str, path: str) -> ModuleType:
    """The module at ``path`` (e.g. ``stx_platform/labels/cluster.py``) as of revision ``rev``,
    loaded under its own name (``cluster_<rev>``) beside this checkout's, for a before / after in
    one process. Its own imports resolve to this checkout's modules."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    stem = os.path.splitext(os.path.basename(path))[0]
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"{stem}_{rev}", loader=None))
    sys.modules[mod.__name__] = mod
    exec(compile(src, f"{os.path.basename(path)}@{rev}", "exec"), mod.__dict__)
    return mod
