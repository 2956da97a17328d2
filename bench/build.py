"""Benchmark: patch cutting end to end (region read + resample + rasterise + encode + Parquet
write), patches/s per core, and the speed-up from 1 to 2 Ray workers on the same slides.

    python bench/build.py                   # 8 synthetic slides x 3000 cells
    python bench/build.py --slides 4 --cells 6000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time


def cut(ref: str, out: str) -> int:
    from stx_platform import storage
    from stx_platform.build.manifest import shard_path
    from stx_platform.build.slide import write_shard
    from stx_platform.patches.config import PatchConfig
    from stx_platform.progress import Progress
    from stx_platform.sources import read_sample

    sample = read_sample(ref)
    n, _ = write_shard(storage.join(out, shard_path(sample.sample_id)), sample, PatchConfig(), Progress(None))
    return n


def main() -> None:
    import ray

    from stx_platform.ray_session import ray_session
    from stx_platform.sources import list_samples
    from stx_platform.synth.generate import generate_set, plan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--cells", type=int, default=3000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="stx-bench-build-")
    try:
        src = f"{tmp}/hest"
        generate_set(src, plan(args.slides, seed=3, cells=args.cells), layout="hest")
        refs = list_samples(src)
        with ray_session(num_cpus=2, join_env=False):
            task = ray.remote(num_cpus=1)(cut)
            ray.get(task.remote(refs[0], f"{tmp}/warm"))  # worker start-up and imports
            results = {}
            for workers in (1, 2):
                out = f"{tmp}/out{workers}"
                t = time.perf_counter()
                if workers == 1:
                    n = sum(ray.get(task.remote(r, out)) for r in refs)
                else:
                    n = sum(ray.get([task.remote(r, out) for r in refs]))
                dt = time.perf_counter() - t
                results[workers] = (n, dt)
                print(f"{workers} worker(s): {n} patches in {dt:.1f} s = {n / dt:.0f} patches/s "
                      f"= {n / dt / workers:.0f} patches/s/core", flush=True)
        print(f"speed-up 1 -> 2 workers: x{results[1][1] / results[2][1]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
