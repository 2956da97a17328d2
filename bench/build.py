"""Benchmark: patch cutting end to end (region read + resample + rasterise + encode + Parquet
write), patches/s per core for each image codec, against another git revision's code.

Synthesises ``--slides`` HEST-layout slides once, then measures ``write_shard`` (plan, cut, encode,
write one Parquet shard per slide) in a fresh single-threaded process per (code, codec), in
alternating turns, ``--repeats`` times: patches per CPU-second of that process (= patches/s/core;
robust on a shared machine) and per wall second, and the shard bytes per patch. ``--baseline REV``
exports that revision's tree (``git archive``) and runs it the same way, so the ratio is measured
on one machine in one run. ``--ray`` adds the build as Ray runs it: slide tasks of 1 CPU on a
local Ray of 1 CPU per (code, codec), and of 2 CPUs for this code's default codec (read_sample
included, wall time: noisier on a shared machine).

    python bench/build.py --baseline 3a0d2c6          # 8 synthetic slides x 3000 cells, png/jpeg/qoi
    python bench/build.py --slides 4 --cells 6000 --formats png,jpeg --ray
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from revision import export_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 360  # patches/s/core, issue 22
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cut(ref: str, out: str, image_format: str | None = None) -> int:
    """Read a sample and write its shard (a Ray slide task's patch stage); returns patches."""
    from stx_platform import storage
    from stx_platform.build.manifest import shard_path
    from stx_platform.build.slide import write_shard
    from stx_platform.patches.config import PatchConfig
    from stx_platform.progress import Progress
    from stx_platform.sources import read_sample

    sample = read_sample(ref)
    config = PatchConfig() if image_format is None else PatchConfig(image_format=image_format)
    n, _ = write_shard(storage.join(out, shard_path(sample.sample_id)), sample, config, Progress(None))
    return n


def worker(refs: list[str], out: str, image_format: str) -> dict:
    """In this process, one thread: write_shard for every slide; CPU and wall seconds of the cut
    only (samples are read first), shard bytes."""
    import cv2

    from stx_platform import storage
    from stx_platform.build.manifest import shard_path
    from stx_platform.build.slide import write_shard
    from stx_platform.patches.config import PatchConfig
    from stx_platform.progress import Progress
    from stx_platform.sources import read_sample

    cv2.setNumThreads(1)
    config = PatchConfig(image_format=image_format)
    samples = [read_sample(r) for r in refs]
    n = 0
    c, t = time.process_time(), time.perf_counter()
    for s in samples:
        n += write_shard(storage.join(out, shard_path(s.sample_id)), s, config, Progress(None))[0]
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs if f.endswith(".parquet"))
    return {"patches": n, "cpu_s": cpu, "wall_s": wall, "bytes": size}


def run_worker(tree: str, refs: list[str], out: str, image_format: str) -> dict | None:
    """``worker`` in a fresh process importing stx_platform from ``tree``; None when that code has
    no such image format."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": tree}
    code = (f"import json, sys; sys.path.insert(0, {ROOT + '/bench'!r}); from build import worker; "
            f"print(json.dumps(worker({refs!r}, {out!r}, {image_format!r})))")
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if p.returncode:
        if "image_format" in p.stderr:
            return None
        raise RuntimeError(f"worker failed in {tree}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def ray_rate(refs: list[str], out: str, image_format: str, workers: int) -> dict:
    """Slide tasks of 1 CPU on a local Ray of ``workers`` CPUs (after a warm-up task): wall time
    for all slides, read_sample included, as a build runs them."""
    import ray

    from stx_platform.ray_session import ray_session

    with ray_session(num_cpus=workers, join_env=False):
        task = ray.remote(num_cpus=1)(cut)
        ray.get(task.remote(refs[0], f"{out}-warm", image_format))  # worker start-up and imports
        t = time.perf_counter()
        n = sum(ray.get([task.remote(r, out, image_format) for r in refs]))
        return {"patches": n, "wall_s": time.perf_counter() - t, "workers": workers}


def run_ray(tree: str, refs: list[str], out: str, image_format: str, workers: int) -> dict | None:
    """``ray_rate`` in a fresh process (and Ray) importing stx_platform from ``tree``."""
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT}/bench"}
    code = (f"import json; from build import ray_rate; "
            f"print(json.dumps(ray_rate({refs!r}, {out!r}, {image_format!r}, {workers})))")
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(f"{out}-warm", ignore_errors=True)
    if p.returncode:
        if "image_format" in p.stderr:
            return None
        raise RuntimeError(f"Ray run failed in {tree}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--cells", type=int, default=3000)
    ap.add_argument("--formats", default="png,jpeg,qoi", help="image codecs to measure, comma-separated")
    ap.add_argument("--baseline", metavar="REV", help="also measure the code of this git revision")
    ap.add_argument("--repeats", type=int, default=3, help="turns per (code, codec); medians are reported")
    ap.add_argument("--ray", action="store_true", help="also time the build through Ray (1 and 2 workers)")
    args = ap.parse_args()

    from stx_platform.patches.config import PatchConfig
    from stx_platform.sources import list_samples
    from stx_platform.synth.generate import generate_set, plan

    tmp = tempfile.mkdtemp(prefix="stx-bench-build-")
    try:
        src = f"{tmp}/hest"
        generate_set(src, plan(args.slides, seed=3, cells=args.cells), layout="hest")
        refs = list_samples(src)
        trees = {"this": ROOT}
        if args.baseline:
            trees[args.baseline] = export_tree(args.baseline, tmp)
        formats = args.formats.split(",")
        runs: dict = {(k, f): [] for k in trees for f in formats}
        for rep in range(args.repeats):
            for (name, fmt), got in runs.items():
                r = run_worker(trees[name], refs, f"{tmp}/out", fmt)
                if r is not None:
                    got.append(r)
                    print(f"  turn {rep + 1}: {name:>8} {fmt:5s} {r['patches']} patches, "
                          f"{r['patches'] / r['cpu_s']:.0f}/cpu-s, {r['patches'] / r['wall_s']:.0f}/wall-s", flush=True)
        default = PatchConfig().image_format
        print(f"\n{args.slides} slides x {args.cells} cells; write_shard in one single-threaded process, medians of "
              f"{args.repeats} turns; default codec: {default}")
        print(f"{'code':>8} {'codec':6s} {'patches':>8} {'patches/s/core':>15} {'(wall)':>8} {'bytes/patch':>12} "
              f"{'x baseline':>10}")
        rate = {k: statistics.median(g["patches"] / g["cpu_s"] for g in got) for k, got in runs.items() if got}
        base = rate.get((args.baseline, default)) if args.baseline else None
        for (name, fmt), got in runs.items():
            if not got:
                print(f"{name:>8} {fmt:6s} {'(not supported by this code)':>40}")
                continue
            wall = statistics.median(g["patches"] / g["wall_s"] for g in got)
            ratio = f"x{rate[name, fmt] / base:.2f}" if base else ""
            print(f"{name:>8} {fmt:6s} {got[0]['patches']:8d} {rate[name, fmt]:15.0f} {wall:8.0f} "
                  f"{got[0]['bytes'] / got[0]['patches']:12,.0f} {ratio:>10}")
        for fmt in formats:
            if ("this", fmt) in rate:
                r = rate["this", fmt]
                verdict = f"{r:.0f} patches/s/core {'>=' if r >= TARGET else '<'} {TARGET}"
                if base:
                    verdict += f"; x{r / base:.2f} the baseline ({args.baseline}, {default}) {'>=' if r >= 3 * base else '<'} x3"
                print(f"target, {fmt}{' (default)' if fmt == default else ''}: {verdict}")
        if args.ray:
            print("\nthrough Ray (slide tasks of 1 CPU, read_sample included, wall time):")
            for (name, fmt) in runs:
                for workers in (1, 2) if (name, fmt) == ("this", default) else (1,):
                    r = run_ray(trees[name], refs, f"{tmp}/ray", fmt, workers)
                    if r is not None:
                        print(f"{name:>8} {fmt:6s} {workers} worker(s): {r['patches']} patches in {r['wall_s']:.1f} s "
                              f"= {r['patches'] / r['wall_s'] / workers:.0f} patches/s/core", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
