"""Build the node image and check it, where a Docker daemon runs (not on the machine the test
suite runs on, which has none):

    python deploy/image/build_check.py            # from the repository root

It builds the CPU image from this checkout, then checks in it: Python is the base tag's, the
smoke check (smoke.py) passes, the project is installed (not a mounted checkout), and cluster.yaml's
setup command, with this checkout mounted where `ray up` mounts it, skips its pip install. The
image is removed afterwards. Exits 1 with the failing step's output, 2 without Docker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    docker = shutil.which("docker")
    if not docker:
        print("no docker command on PATH", file=sys.stderr)
        return 2
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        print(f"no Docker daemon answers `docker info`: {(info.stderr.strip().splitlines() or ['?'])[-1]}",
              file=sys.stderr)
        return 2
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1).replace("${FLAVOR}", "cpu")
    python = ".".join(re.search(r"-py(\d)(\d+)-", base).groups())
    setup = yaml.safe_load((ROOT / "cluster.yaml").read_text())["setup_commands"][0]
    tag = f"stx-platform-check:{os.getpid()}"

    def step(what: str, cmd: list[str], want=lambda out: True) -> str:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0 or not want(r.stdout):
            raise SystemExit(f"FAILED: {what}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        print(f"ok: {what}", flush=True)
        return r.stdout

    def run(*cmd: str, opts: tuple = ()) -> list[str]:
        return [docker, "run", "--rm", *opts, tag, *cmd]

    step(f"docker build ({base})", [docker, "build", "-t", tag, str(ROOT)])
    try:
        step(f"Python {python}", run("python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"),
             lambda out: out.strip() == python)
        step("smoke check", run("bash", "-c", 'python "$STX_IMAGE_PINS/smoke.py" cpu'),
             lambda out: out.startswith("ok (cpu)"))
        step("stx_platform installed in site-packages",
             run("python", "-c", "import stx_platform; print(stx_platform.__file__)"),
             lambda out: "site-packages" in out)
        step("cluster.yaml's setup command skips pip on this image",
             run("bash", "-c", "pip() { echo PIP-RAN; }; " + setup + " && echo DONE",
                 opts=("-v", f"{ROOT}:/home/ray/stx-platform:ro")),
             lambda out: "DONE" in out and "PIP-RAN" not in out)
    finally:
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=300)
    return 0


if __name__ == "__main__":
    sys.exit(main())
