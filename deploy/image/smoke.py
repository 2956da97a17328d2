"""Smoke check for the node image (the Dockerfile's last step; tests/test_image.py runs it in the
built image). It also runs in any environment installed as README says:

    python deploy/image/smoke.py cpu|gpu [--pins DIR]

Checks that stx_platform, ray and torch import; that every dependency in pyproject.toml (and
boto3, which the head's autoscaler needs) is installed at the version constraints.txt pins; that
torch is the CPU build for ``cpu`` and a CUDA build for ``gpu``; and that ``stx --help`` runs.
DIR holds constraints.txt and pyproject.toml: $STX_IMAGE_PINS in the image, else the repository.
Prints one line and exits 0, or prints each problem and exits 1."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: Installed beside the project's own dependencies (cluster.yaml's head_setup_commands).
EXTRA = ("boto3",)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return _norm(re.split(r"[\[<>=!~;\s]", requirement.strip(), maxsplit=1)[0])


def pins(constraints: Path) -> dict[str, str]:
    """name -> pinned version, from ``name==version`` lines."""
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, ver = line.split("==", 1)
            out[_name(name)] = ver.strip()
    return out


def problems(flavor: str, pins_dir: Path) -> list[str]:
    found = []
    pinned = pins(pins_dir / "constraints.txt")
    deps = tomllib.loads((pins_dir / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in sorted({_name(d) for d in deps} | set(EXTRA)):
        if name not in pinned:
            found.append(f"{name}: not pinned in constraints.txt")
            continue
        try:
            have = version(name)
        except PackageNotFoundError:
            found.append(f"{name}: not installed (pinned {pinned[name]})")
            continue
        if have.split("+", 1)[0] != pinned[name]:   # torch's local label (+cpu) aside
            found.append(f"{name}: {have} installed, {pinned[name]} pinned")
    try:
        import ray
        import torch

        import stx_platform.cli  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is the finding
        return found + [f"import failed: {type(e).__name__}: {e}"]
    cuda = torch.version.cuda
    if (flavor == "cpu") != (cuda is None):
        found.append(f"torch {torch.__version__} is {'a CUDA' if cuda else 'the CPU'} build; "
                     f"the {flavor} image needs {'the CPU' if flavor == 'cpu' else 'a CUDA'} build")
    stx = Path(sys.executable).with_name("stx")
    r = subprocess.run([str(stx), "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        found.append(f"{stx} --help exited {r.returncode}: {(r.stderr or r.stdout)[-500:]}")
    if not found:
        print(f"ok ({flavor}): python {sys.version.split()[0]}, ray {ray.__version__}, torch {torch.__version__}, "
              f"{len(deps) + len(EXTRA)} dependencies at their pins, stx --help runs")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("flavor", choices=["cpu", "gpu"])
    default = os.environ.get("STX_IMAGE_PINS") or str(Path(__file__).resolve().parents[2])
    p.add_argument("--pins", default=default, help="folder with constraints.txt and pyproject.toml (default: %(default)s)")
    args = p.parse_args(argv)
    found = problems(args.flavor, Path(args.pins))
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
