"""Benchmark: HoVer-Net HV targets, vectorised (stx_platform.targets.hv_map) against the per-nucleus
reference loop (hv_map_loop, HoVer-Net's style: bounding box crop, centre of mass, normalise).

Both run on the same synthetic PanNuke patches (256x256 at 40x, written by
stx_platform.synth.pannuke.write_pannuke_fold and read back with PanNukeFold), single process.
Prints patches/s of each, their ratio, the largest difference between the two maps, and the
rate of the full targets() (binary + HV + type).

    python bench/targets.py              # 200 patches
    python bench/targets.py --n 50
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np


def load_patches(n: int, seed: int) -> list[tuple[np.ndarray, dict]]:
    from stx_platform.sources.pannuke import PanNukeFold
    from stx_platform.synth.pannuke import write_pannuke_fold

    with tempfile.TemporaryDirectory() as tmp:
        write_pannuke_fold(tmp, n, seed)
        fold = PanNukeFold(tmp)
        items = [fold[i] for i in range(len(fold))]
    return [(it.instances, it.classes) for it in items]


def rate(fn, patches, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for p in patches:
            fn(p)
        best = min(best, time.perf_counter() - t0)
    return len(patches) / best


def main() -> None:
    from stx_platform.targets import hv_map, hv_map_loop, targets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="patches (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes; the best is kept (default 3)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    patches = load_patches(a.n, a.seed)
    nuclei = [int(len(np.unique(inst)) - 1) for inst, _ in patches]
    print(f"{len(patches)} patches 256x256, {sum(nuclei)} nuclei ({np.mean(nuclei):.1f}/patch, max {max(nuclei)}); "
          f"made in {time.perf_counter() - t0:.1f} s")

    diff = max(float(np.abs(hv_map(inst) - hv_map_loop(inst)).max()) for inst, _ in patches)
    print(f"max |vectorised - loop| over all patches: {diff:.2e}")

    r_vec = rate(lambda p: hv_map(p[0]), patches, a.repeat)
    r_loop = rate(lambda p: hv_map_loop(p[0]), patches, a.repeat)
    r_all = rate(lambda p: targets(p[0], p[1]), patches, a.repeat)
    print(f"hv_map (vectorised) : {r_vec:8.1f} patches/s  ({1e3 / r_vec:6.2f} ms/patch)")
    print(f"hv_map_loop         : {r_loop:8.1f} patches/s  ({1e3 / r_loop:6.2f} ms/patch)")
    print(f"speed-up            : {r_vec / r_loop:8.1f}x")
    print(f"targets() (binary+hv+type, vectorised): {r_all:8.1f} patches/s")


if __name__ == "__main__":
    main()
