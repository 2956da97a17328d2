"""Benchmark: one slide task of `stx build` (read -> label -> cut patches), its time per stage and
the peak memory a Ray worker needs for it, in a fresh process on one thread, as a slide task with
1 CPU runs on a cluster (Ray sets OMP_NUM_THREADS to the task's CPUs).

The task runs the functions `build_slide` runs (read_sample, label_sample, write_shard) in a
child process; after each stage it reports the process's peak resident memory so far (ru_maxrss),
so the last figure is the task's peak. The slide is synthesised first, in another process, unless --slide
names one.

    python bench/slide_task.py --cells 500000          # synthesise a 500k-cell slide, then measure
    python bench/slide_task.py --slide /tmp/hest#BENCH000
    python bench/slide_task.py --cells 20000 --threads 2
    python bench/slide_task.py --cells 500000 --blank-he --stages read,label --keep /tmp/b500k

``--blank-he`` synthesises the slide without rendering its H&E (an hour at 500k cells on a busy
machine): the TIFF has the slide's size but no pixels (a sparse file). The read stage looks only
at its header and labelling at no pixel, so both measure as on a rendered slide; patch cutting
on such a slide measures nothing useful.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


_BLANK_SYNTH = """
import sys, numpy as np, tifffile
from stx_platform import storage
import stx_platform.synth.write_hest as wh

def blank_tiff(url, width, height, render, mpp, **kw):
    # level 0 only, no pixel data written: a sparse file whose header has the slide's size
    with storage.staged_output(url, ".tif") as local, tifffile.TiffWriter(local, bigtiff=True) as tw:
        tw.write(None, shape=(height, width, 3), dtype=np.uint8, photometric="rgb")

wh.write_pyramid_tiff = blank_tiff
wh.WSI.thumbnail = lambda self, max_size=1000: np.full(
    (round(self.height * max_size / max(self.width, self.height)),
     round(self.width * max_size / max(self.width, self.height)), 3), 255, np.uint8)
from stx_platform.cli import main
sys.argv = ["stx", *sys.argv[1:]]
main()
"""


def task(ref: str, out: str, stages: tuple[str, ...] = ("read", "label", "patch")) -> dict:
    """The slide task's stages (all, or the first ones), timed, with the process's peak memory
    after each."""
    from stx_platform.build.label_sets import label_sample
    from stx_platform.build.manifest import shard_path
    from stx_platform.build.slide import write_shard
    from stx_platform import storage
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.markers import load_markers
    from stx_platform.patches.config import PatchConfig
    from stx_platform.progress import Progress
    from stx_platform.sources import read_sample

    wanted = stages
    stages = {"imports": {"seconds": 0.0, "peak_gb": peak_gb()}}
    config = LabelConfig()
    db = load_markers(config.markers)

    def stage(name, fn):
        t = time.perf_counter()
        value = fn()
        stages[name] = {"seconds": round(time.perf_counter() - t, 1), "peak_gb": round(peak_gb(), 2)}
        return value

    sample = stage("read", lambda: read_sample(ref))
    got = {"cells": sample.n_cells, "genes": int(sample.expression.n_vars), "stages": stages,
           "transcripts": sample.provenance.get("transcripts_transcripts"), "nnz": int(sample.expression.X.nnz)}
    if "label" in wanted:
        _, res = stage("label", lambda: label_sample(sample, out, config, db))
        got.update(clusters=len(res.clusters), label_stages={k: round(v, 1) for k, v in res.timings.items()})
    if "patch" in wanted:
        got["patches"], got["nuclei"] = stage("patch", lambda: write_shard(
            storage.join(out, shard_path(sample.sample_id)), sample, PatchConfig(), Progress(None)))
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=500_000, help="cells of the synthetic slide (without --slide)")
    ap.add_argument("--organ", default="breast")
    ap.add_argument("--slide", help="measure this sample (ROOT#ID or a Xenium bundle) instead")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/numba threads of the task (its CPUs)")
    ap.add_argument("--keep", help="keep the synthetic slide in this folder")
    ap.add_argument("--stages", default="read,label,patch", choices=("read", "read,label", "read,label,patch"),
                    help="run the task only this far")
    ap.add_argument("--blank-he", action="store_true", help="synthesise the slide with an empty H&E (read only)")
    ap.add_argument("--child", nargs=3, metavar=("REF", "OUT", "STAGES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(task(*args.child[:2], tuple(args.child[2].split(",")))))
        return

    work = tempfile.mkdtemp(prefix="stx-bench-slide-")
    try:
        ref = args.slide
        if ref is None:
            root = args.keep or os.path.join(work, "hest")
            t = time.perf_counter()
            cli = ["-c", _BLANK_SYNTH] if args.blank_he else ["-m", "stx_platform.cli"]
            subprocess.run([sys.executable, *cli, "synth", "--out", root, "--slides", "1",
                            "--cells", str(args.cells), "--organs", args.organ, "--workers", "1"], check=True,
                           stdout=subprocess.DEVNULL)
            from stx_platform.sources import list_samples

            ref = list_samples(root)[0]
            print(f"synthesised {ref} ({args.cells:,} cells) in {time.perf_counter() - t:.0f} s", flush=True)
        env = {**os.environ, **{v: str(args.threads) for v in THREAD_VARS}}
        t = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--child", ref, os.path.join(work, "dataset"), args.stages],
                           env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode:
            sys.exit(f"slide task failed:\n{r.stderr[-3000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        tx = f", {res['transcripts']:,} transcripts" if res.get("transcripts") else ""
        print(f"\nslide task on {args.threads} thread(s): {res['cells']:,} cells x {res['genes']} genes{tx}, "
              f"{res['nnz']:,} non-zero counts" + (f", {res['clusters']} clusters" if "clusters" in res else "")
              + (f", {res['patches']:,} patches, {res['nuclei']:,} nuclei" if "patches" in res else ""))
        print(f"{'stage':<8} {'seconds':>8} {'peak RSS GB':>12}")
        for name, s in res["stages"].items():
            print(f"{name:<8} {s['seconds']:>8.1f} {s['peak_gb']:>12.2f}")
        last = list(res["stages"].values())[-1]
        print(f"{'task':<8} {wall:>8.1f} {last['peak_gb']:>12.2f}   (the task's process, start-up included)")
        if "label_stages" in res:
            print("label stages (s): " + ", ".join(f"{k} {v}" for k, v in res["label_stages"].items()))
        if "patches" in res:
            print(f"patches/s in the patch stage: {res['patches'] / max(res['stages']['patch']['seconds'], 1e-9):.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
