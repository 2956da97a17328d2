"""Benchmark: training-ready samples/s per CPU core, from Parquet patch shards through label join,
augmentation and CellViT targets (stx_platform.training.ingest.transform_batch, the pure path a
Ray Data worker runs), single process with BLAS/OpenMP pinned to one thread. Beside it:

  (a) ceiling: the Parquet read + PNG image + instance-map decode alone;
  (b) baseline: the same ingest with the per-nucleus reference HV loop
      (stx_platform.targets.hv_map_loop) in place of the compiled targets.

A small dataset (a few synthetic HEST slides, built with build_slide) is made in a temp dir. Also
printed: each training preset's augmentation (samples/s/core; TrainConfig sizes GPU ingest from
the cellvit one), ms/sample per stage of the augmented ingest (Parquet read, decode, label join,
augmentation, targets, stack into the compact batch arrays), the train worker's side of a batch
(to_model: widening, colour jitter, normalisation) run by torch on this CPU, and whether the
targets of issue 7 (>= 400 samples/s/core, >= 5x the baseline) and issue 22 (ingest >= 0.6x the
ceiling) are met.

    python bench/ingest.py                   # 2 slides x 1500 cells, best of 3 passes
    python bench/ingest.py --slides 3 --cells 3000 --repeat 2
    python bench/ingest.py --dataset DIR     # an already built dataset (manifest.json) instead
    python bench/ingest.py --baseline REV    # also git revision REV's code: the same slides built and read by it
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

cv2.setNumThreads(1)


def build_dataset(root: str, slides: int, cells: int, seed: int) -> str:
    from stx_platform.build.manifest import write_manifest
    from stx_platform.build.slide import build_slide
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.markers import default_markers
    from stx_platform.patches.config import PatchConfig
    from stx_platform.sources import list_samples
    from stx_platform.synth.generate import generate_set, plan

    hest, out = f"{root}/hest", f"{root}/dataset"
    organs = ("breast", "colon", "lung", "kidney", "pancreas")[:max(1, slides)]
    generate_set(hest, plan(slides=slides, seed=seed, organs=organs, cells=cells), layout="hest", workers=1)
    db = default_markers()
    recs = [build_slide(ref, out, PatchConfig(), LabelConfig(), db) for ref in list_samples(hest)]
    write_manifest(out, recs, {})
    return out


def read_shards(urls: list[str]) -> list[dict]:
    from stx_platform.training.ingest import READ_COLUMNS

    batches = []
    for u in urls:
        t = pq.read_table(u, columns=list(READ_COLUMNS))
        batches.append({c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names})
    return batches


def _keep_dtype() -> dict:
    """decode_instance_map's arguments that decode as the ingest does (the stored dtype), where the
    code has that option (a baseline revision may not)."""
    import inspect

    from stx_platform.patches.schema import decode_instance_map

    return {"dtype": None} if "dtype" in inspect.signature(decode_instance_map).parameters else {}


def decode_only(urls: list[str]) -> int:
    from stx_platform.patches.schema import decode_image, decode_instance_map

    keep = _keep_dtype()
    n = 0
    for b in read_shards(urls):
        for img, inst in zip(b["image"], b["instance_map"]):
            decode_image(img)
            decode_instance_map(inst, **keep)
            n += 1
    return n


def ingest(urls: list[str], labels, augment: bool = True, sink=None, config=None) -> int:
    from stx_platform.training.ingest import transform_batch

    n = 0
    for b in read_shards(urls):
        for s in range(0, len(b["image"]), 16):                 # Ray Data batches of 16 records
            out = transform_batch({k: v[s:s + 16] for k, v in b.items()}, labels, seed=0, augment=augment,
                                  config=config)
            n += len(out["tissue"])
            if sink is not None:
                sink.append(out)
    return n


def device_ms(batches: list[dict]) -> float:
    """ms/sample of the train worker's side (to_model: widen, colour jitter, normalise) run by
    torch on this CPU with one thread: what a CPU-only training pays for it (a GPU, next to nothing)."""
    import torch

    from stx_platform.training.ingest import to_model

    torch.set_num_threads(1)
    tensors = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]
    t = time.perf_counter()
    n = sum(len(to_model(b)[0]) for b in tensors)
    return 1e3 * (time.perf_counter() - t) / max(n, 1)


STAGES = ("read", "decode", "label join", "augmentation", "targets", "stack")


def stage_times(urls: list[str], labels, repeat: int) -> dict[str, float]:
    """ms/sample per stage of transform_batch's work (augmented, batches of 16), each stage timed
    around its calls record by record (CPU time); best pass per stage."""
    from stx_platform.patches.schema import decode_image, decode_instance_map
    from stx_platform.targets import targets
    from stx_platform.training import ingest as I

    clock = time.process_time
    best, n = dict.fromkeys(STAGES, np.inf), 0
    for _ in range(repeat):
        acc, n = dict.fromkeys(STAGES, 0.0), 0
        t = clock()
        shards = read_shards(urls)
        acc["read"] += clock() - t
        for b in shards:
            for s in range(0, len(b["image"]), 16):
                rows = range(s, min(s + 16, len(b["image"])))
                out = None
                for i, j in enumerate(rows):
                    t0 = clock()
                    row = None if out is None else out["image"][i]
                    img, inst = decode_image(b["image"][j], row), decode_instance_map(b["instance_map"][j], dtype=None)
                    t1 = clock()
                    classes = I._classes(b["cell_ids"][j], labels, b["sample_id"][j])
                    t2 = clock()
                    img, inst, _, _ = I.augment_shape(img, inst, I.patch_rng(0, 0, str(b["patch_id"][j])),
                                                      defer_image=True)
                    t3 = clock()
                    if out is None:
                        out = I._empty_batch(len(rows), *inst.shape)
                    t4 = clock()
                    targets(inst, classes, out={"binary": out["binary"][i], "hv": out["hv"][i], "type": out["type"][i]})
                    t5 = clock()
                    if img is not row:
                        out["image"][i] = img
                    out["tissue"][i] = I.tissue_index(b["organ"][j])
                    t6 = clock()
                    for k, dt in zip(STAGES[1:], (t1 - t0, t2 - t1, t3 - t2, t5 - t4, t6 - t5 + t4 - t3)):
                        acc[k] += dt
                    n += 1
        best = {k: min(best[k], acc[k]) for k in STAGES}
    return {k: 1e3 * v / max(n, 1) for k, v in best.items()}


@contextlib.contextmanager
def loop_hv():
    """The ingest with its targets computed by the per-nucleus reference HV loop."""
    import stx_platform.targets as T
    from stx_platform.training import ingest as I

    fast = I.targets

    def loop(inst, classes, out):
        out["binary"][...] = inst > 0
        out["hv"][...] = T.hv_map_loop(inst)
        out["type"][...] = T.type_map(inst, classes)
        return out

    I.targets = loop
    try:
        yield
    finally:
        I.targets = fast


def paired(fns: dict, repeat: int) -> tuple[dict[str, float], float]:
    """Each of ``fns`` (name -> callable returning samples) run in turn, ``repeat`` rounds: (best
    samples/s per name, median over rounds of the second one's rate / the first one's). Pairing
    the two in every round keeps a shared machine's drift out of their ratio."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    n = dict.fromkeys(fns, 0)
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.process_time()
            n[k] = fn()
            times[k].append(time.process_time() - t0)
    first, second = list(fns)[:2]
    ratio = float(np.median([a / b for a, b in zip(times[first], times[second])]))
    return {k: n[k] / min(v) for k, v in times.items()}, ratio


def rate(fn, repeat: int) -> float:
    best, n = np.inf, 0
    for _ in range(repeat):
        t0 = time.process_time()
        n = fn()
        best = min(best, time.process_time() - t0)
    return n / best


def rates(slides: int, cells: int, seed: int, repeat: int) -> dict:
    """CPU samples/s of the ceiling and the augmented ingest of a synthetic dataset built and read
    by the stx_platform this process imports (run as a child process over another revision's tree
    by --baseline: that code builds the same slides, in its own shard format)."""
    from stx_platform.training.ingest import LabelLookup, shard_urls

    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_dataset(tmp, slides, cells, seed)
        urls, labels = shard_urls(dataset), LabelLookup(dataset)
        best, ratio = paired({"ceiling": lambda: decode_only(urls), "ingest": lambda: ingest(urls, labels)}, repeat)
        return {**best, "ratio": ratio}


def baseline_rates(rev: str, slides: int, cells: int, seed: int, repeat: int) -> dict:
    """:func:`rates` of git revision ``rev``'s code (its tree exported with ``git archive``), in
    a fresh process on one thread."""
    import json
    import subprocess
    import sys

    from revision import export_tree

    with tempfile.TemporaryDirectory() as tmp:
        tree = export_tree(rev, tmp)
        here = os.path.dirname(os.path.abspath(__file__))
        code = (f"import json, sys; sys.path.insert(0, {here!r}); import ingest; "
                f"print(json.dumps(ingest.rates({slides}, {cells}, {seed}, {repeat})))")
        p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": tree}, cwd=tree,
                           capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"baseline {rev} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=2)
    ap.add_argument("--cells", type=int, default=1500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--dataset", help="an already built dataset directory (skips building one)")
    ap.add_argument("--baseline", metavar="REV", help="also measure the ingest of this git revision's code "
                                                      "(on the same synthetic slides, built by that code)")
    args = ap.parse_args()

    from stx_platform.training.config import PRESETS, TrainConfig
    from stx_platform.training.ingest import LabelLookup, shard_urls

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds = args.dataset or build_dataset(tmp, args.slides, args.cells, args.seed)
        urls = shard_urls(ds)
        labels = LabelLookup(ds)                                 # as the ingest actors join labels
        n = sum(pq.ParquetFile(u).metadata.num_rows for u in urls)
        nuclei = sum(len(c) for b in read_shards(urls) for c in b["cell_ids"])
        print(f"dataset: {len(urls)} slides, {n} patches of 256 px, {nuclei / max(n, 1):.1f} nuclei/patch "
              f"(built in {time.perf_counter() - t0:.1f} s); one process, one thread, CPU time; best of {args.repeat}")
        best, ratio = paired({"ceiling": lambda: decode_only(urls),
                              "ingest": lambda: ingest(urls, labels, augment=True)}, args.repeat)
        ceiling, ours = best["ceiling"], best["ingest"]
        no_aug = rate(lambda: ingest(urls, labels, augment=False), args.repeat)
        presets = {name: rate(lambda c=TrainConfig.preset_config(name).augmentation: ingest(urls, labels, config=c),
                              args.repeat) for name in PRESETS}
        with loop_hv():
            base = rate(lambda: ingest(urls, labels, augment=True), args.repeat)
        stages = stage_times(urls, labels, args.repeat)
        sent: list[dict] = []
        ingest(urls, labels, augment=True, sink=sent)
        on_device = device_ms(sent)
        old = baseline_rates(args.baseline, args.slides, args.cells, args.seed, args.repeat) if args.baseline else None
    print(f"  (a) Parquet read + decode (ceiling)       {ceiling:8.1f} samples/s/core  {1e3 / ceiling:6.2f} ms")
    print(f"      ingest, targets, no augmentation      {no_aug:8.1f} samples/s/core  {1e3 / no_aug:6.2f} ms")
    print(f"      ingest + augmentation + targets       {ours:8.1f} samples/s/core  {1e3 / ours:6.2f} ms")
    for name, r in presets.items():
        print(f"      ... with the {name} preset's augmentation".ljust(44) + f"{r:8.1f} samples/s/core  {1e3 / r:6.2f} ms")
    print(f"  (b) same with hv_map_loop (baseline)      {base:8.1f} samples/s/core  {1e3 / base:6.2f} ms")
    print(f"  ingest / ceiling = {ratio:.2f} (median of rounds run in turn)   ingest / baseline = {ours / base:.2f}x   "
          f"augmentation cost = {1e3 / ours - 1e3 / no_aug:.2f} ms/sample")
    print("  per stage, ms/sample: " + "  ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f"  (sum {sum(stages.values()):.2f})")
    print(f"  train worker's side (to_model: widen, colour jitter, normalise), torch on this CPU: "
          f"{on_device:.2f} ms/sample")
    print(f"  target ingest >= 0.6x ceiling: {'met' if ratio >= 0.6 else 'NOT met'} ({ratio:.3f})")
    if old:
        print(f"  {args.baseline}: ceiling {old['ceiling']:.1f}, ingest {old['ingest']:.1f} samples/s/core, "
              f"ingest / ceiling = {old['ratio']:.2f};  this code's ingest = "
              f"{ours / old['ingest']:.2f}x {args.baseline}'s")
    ok_rate, ok_ratio = ours >= 400, ours / base >= 5
    print(f"  target >= 400 samples/s/core: {'met' if ok_rate else 'NOT met'} ({ours:.0f});  "
          f">= 5x baseline: {'met' if ok_ratio else 'NOT met'} ({ours / base:.2f}x)")


if __name__ == "__main__":
    main()
