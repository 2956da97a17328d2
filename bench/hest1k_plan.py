"""Plan a HEST-1k run on a given cluster: build time, ingest cores per GPU and training time.

The training set is the paper's (Table 1): 51 Xenium slides, 373,214 patches, 6,643,746 nuclei
(130k nuclei and 7,318 patches per slide on average). Per-core rates default to the figures
measured on this project's 2-core machine (docs/scaling.md, each beside its command); pass your
own, or ``--measure`` to measure the ingest and patch rates and the label time here first. The
GPU's images/s is not measured here (no GPU): give it with ``--gpu-images-per-s`` (measure it
with ``python bench/model.py --device cuda --configs vit256 --batches 16 64`` on the cluster).

What is computed, and the arithmetic shown in the output:

- build: one task per slide at ``--cpus-per-slide`` CPUs; slots = min(CPU slots, memory slots)
  over the CPU nodes; a typical slide's task = read + label (both per 100k cells, scaled to the
  slide's cells) + patches / patch rate; wall time = rounds of slots x the typical task, and the
  500k-cell slide's task when one is in the set;
- ingest: cores to feed one GPU = GPU images/s / ingest samples/s per core;
- training: epochs x patches / min(GPUs x GPU images/s, ingest cores x ingest rate).

    python bench/hest1k_plan.py --cpu-nodes 4 --cpus-per-node 16 --mem-per-node 128 \\
        --gpus 4 --gpu-cpus 48 --gpu-images-per-s 150
    python bench/hest1k_plan.py --measure          # this machine's rates first (about 2 minutes)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

from stx_platform.training.config import INGEST_PER_CORE, TrainConfig

#: HEST-1k Xenium training set (the paper's Table 1)
SLIDES, PATCHES, NUCLEI = 51, 373_214, 6_643_746


@dataclass
class Rates:
    """Per-core figures (one thread): the defaults are the figures measured here, docs/scaling.md."""
    read_s_per_100k: float = 1.6        # read stage, s per 100k cells (bench/slide_task.py, 100k cells)
    label_s_per_100k: float = 7.9       # label stage, a fresh process's first call (same run)
    patches_per_s: float = 294.0        # patch stage of that task, patches/s (bench/build.py: 390/core CPU)
    # training ingest with the cellvit preset's augmentation, samples/s per core (bench/ingest.py)
    ingest_per_s: float = INGEST_PER_CORE["albumentations"]
    task_gb_per_100k: float = 1.29      # the task's peak memory at 100k cells (5.6 GB measured at 500k)


def measure(rates: Rates) -> Rates:
    """Ingest and patch rates and label/read time per 100k cells measured on this machine, on
    small synthetic slides (one process, one thread). Times and memory are scaled linearly from a
    30k-cell slide, so fixed costs (imports, numba's compile) are counted several times over: an
    upper bound; the defaults are a 100k-cell slide's figures."""
    import tempfile
    import time

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import ingest as bench_ingest  # noqa: E402  (bench/ingest.py)

    from stx_platform.training.ingest import load_labels, shard_urls

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ds = bench_ingest.build_dataset(tmp, slides=2, cells=3000, seed=11)
        print(f"  built a 2-slide dataset in {time.perf_counter() - t:.0f} s", flush=True)
        urls, labels = shard_urls(ds), load_labels(ds)
        aug = TrainConfig.preset_config("cellvit").augmentation
        rates.ingest_per_s = bench_ingest.rate(lambda: bench_ingest.ingest(urls, labels, config=aug), 2)
        print(f"  ingest (cellvit augmentation): {rates.ingest_per_s:.0f} samples/s/core", flush=True)
    import subprocess

    out = subprocess.run([sys.executable, os.path.join(here, "slide_task.py"), "--cells", "30000"],
                         capture_output=True, text=True, check=True).stdout
    stages = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("read", "label", "patch", "task"):
            try:
                stages[parts[0]] = (float(parts[1]), float(parts[2]))
            except ValueError:
                pass
        if line.startswith("patches/s in the patch stage:"):
            rates.patches_per_s = float(line.split(":")[1])
    scale = 100_000 / 30_000
    rates.read_s_per_100k = stages["read"][0] * scale
    rates.label_s_per_100k = stages["label"][0] * scale
    rates.task_gb_per_100k = stages["task"][1] * scale
    print(f"  slide task (30k cells): read {stages['read'][0]} s, label {stages['label'][0]} s, "
          f"{rates.patches_per_s:.0f} patches/s, peak {stages['task'][1]} GB", flush=True)
    return rates


def task_seconds(cells: float, patches: float, r: Rates) -> float:
    return (r.read_s_per_100k + r.label_s_per_100k) * cells / 1e5 + patches / r.patches_per_s


def plan(args: argparse.Namespace, r: Rates) -> list[str]:
    lines = []
    cells, patches = NUCLEI / SLIDES, PATCHES / SLIDES
    task_gb = max(1.0, r.task_gb_per_100k * cells / 1e5)
    cpu_slots = args.cpu_nodes * (args.cpus_per_node // args.cpus_per_slide)
    mem_slots = args.cpu_nodes * int(args.mem_per_node // task_gb)
    slots = max(1, min(cpu_slots, mem_slots))
    typical = task_seconds(cells, patches, r)
    rounds = math.ceil(SLIDES / slots)
    big = task_seconds(500_000, 500_000 * patches / cells, r)
    lines += [
        f"HEST-1k training set: {SLIDES} slides, {PATCHES:,} patches, {NUCLEI:,} nuclei "
        f"({cells:,.0f} cells and {patches:,.0f} patches per slide)",
        "",
        "Build (one task per slide)",
        f"  typical slide task = ({r.read_s_per_100k:.1f} + {r.label_s_per_100k:.1f}) s x {cells / 1e5:.2f} "
        f"+ {patches:,.0f} / {r.patches_per_s:.0f} patches/s = {typical:.0f} s, peak ~{task_gb:.1f} GB",
        f"  slots = min({args.cpu_nodes} nodes x {args.cpus_per_node} // {args.cpus_per_slide} CPUs, "
        f"{args.cpu_nodes} x {args.mem_per_node:.0f} GB // {task_gb:.1f} GB) = {slots}",
        f"  wall ~ {rounds} round(s) x {typical:.0f} s = {rounds * typical / 60:.1f} min "
        f"(a 500k-cell slide's task: {big / 60:.1f} min); CPU time {SLIDES * typical / 3600:.1f} CPU-h",
    ]
    lines += ["", "Training ingest"]
    need = None
    if args.gpu_images_per_s:
        need = args.gpu_images_per_s / r.ingest_per_s
        lines.append(f"  cores per GPU = {args.gpu_images_per_s:.0f} images/s / {r.ingest_per_s:.0f} samples/s/core "
                     f"= {need:.2f}")
    else:
        lines.append(f"  cores per GPU = G / {r.ingest_per_s:.0f} samples/s/core (give --gpu-images-per-s G)")
    spare = max(0.0, args.gpu_cpus - 0.5 * args.gpus)
    lines.append(f"  GPU nodes' spare CPUs for ingest: {args.gpu_cpus} - {args.gpus} x 0.5 (train workers) = {spare:.1f} "
                 f"-> up to {spare * r.ingest_per_s:,.0f} samples/s")
    samples = args.epochs * PATCHES
    lines += ["", f"Training: {args.epochs} epochs x {PATCHES:,} patches = {samples / 1e6:.1f} M samples"]
    if args.gpu_images_per_s and args.gpus:
        gpu_rate = args.gpus * args.gpu_images_per_s
        rate = min(gpu_rate, spare * r.ingest_per_s) if spare else gpu_rate
        bound = "GPU-bound" if rate == gpu_rate else "ingest-bound: add CPUs for ingest"
        lines.append(f"  rate = min({args.gpus} GPUs x {args.gpu_images_per_s:.0f}, {spare:.1f} cores x "
                     f"{r.ingest_per_s:.0f}) = {rate:,.0f} samples/s ({bound})")
        lines.append(f"  wall = {samples / 1e6:.1f} M / {rate:,.0f} = {samples / rate / 3600:.1f} h")
    else:
        lines.append(f"  wall = {samples / 1e6:.1f} M / (GPUs x G) s (give --gpus and --gpu-images-per-s)")
    return lines


def main() -> None:
    d = Rates()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-nodes", type=int, default=4, help="CPU worker nodes for the build")
    ap.add_argument("--cpus-per-node", type=int, default=16)
    ap.add_argument("--mem-per-node", type=float, default=128.0, help="GB per CPU node")
    ap.add_argument("--cpus-per-slide", type=int, default=1)
    ap.add_argument("--gpus", type=int, default=4, help="GPUs training at once")
    ap.add_argument("--gpu-cpus", type=int, default=48, help="CPUs on the GPU nodes (they run the ingest)")
    ap.add_argument("--gpu-images-per-s", type=float, default=0.0, help="training images/s of one GPU")
    ap.add_argument("--epochs", type=int, default=130)
    ap.add_argument("--read-s-per-100k", type=float, default=d.read_s_per_100k)
    ap.add_argument("--label-s-per-100k", type=float, default=d.label_s_per_100k)
    ap.add_argument("--patches-per-s", type=float, default=d.patches_per_s, help="patch cutting, per core")
    ap.add_argument("--ingest-per-s", type=float, default=d.ingest_per_s, help="training ingest, per core")
    ap.add_argument("--task-gb-per-100k", type=float, default=d.task_gb_per_100k)
    ap.add_argument("--measure", action="store_true", help="measure this machine's rates first")
    args = ap.parse_args()
    rates = Rates(args.read_s_per_100k, args.label_s_per_100k, args.patches_per_s, args.ingest_per_s,
                  args.task_gb_per_100k)
    if args.measure:
        print("measuring this machine's rates (one thread)...", flush=True)
        rates = measure(rates)
    print("\n".join(plan(args, rates)))


if __name__ == "__main__":
    main()
