"""Benchmark: patch image and instance-map encodings, and patch cutting throughput.

Builds a synthetic HEST-layout slide (or uses ``--sample ROOT#ID``), cuts its patches with
``patches_for_sample`` (PanNuke-like defaults, overlap added when needed to reach ``--patches``
patches) on one core, then encodes the ~200 patch images and instance maps with each candidate
codec and reports mean bytes/patch and encode / decode CPU time per patch (best of 3 passes):

- images: PNG as encode_image writes it (Sub rows, libdeflate level 1, 3 or 6), PNG by cv2 (its
  default, as shards were written before, and compression 1), lossless WebP, JPEG q90 / q95
  (with PSNR), QOI, and raw + zstd (imagecodecs);
- instance maps: PNG 16-bit, PNG 8-bit when ids < 256 (else 16-bit), raw int32 + zlib, raw
  uint16 + zlib, and raw in the smallest dtype that holds the ids + zlib (the old default) or
  zstd (the default).

    python bench/patch_codecs.py                 # ~30 s on one core
    python bench/patch_codecs.py --cells 1500    # quicker
    python bench/patch_codecs.py --real ../shared/data/real/nucls_breast/*/*.png  # + real H&E crops
"""

from __future__ import annotations

import argparse
import tempfile
import time

import cv2
import numpy as np

from stx_platform.patches import PatchConfig, decode_image, decode_instance_map, encode_image, encode_instance_map
from stx_platform.patches.cut import patches_for_sample, plan_patches

from imagecodecs import webp_decode, webp_encode, zstd_decode, zstd_encode


def _timed(fn, items, repeat: int = 3) -> tuple[list, float]:
    """Results of fn over items and the best-of-``repeat`` CPU time per item, in microseconds."""
    best = float("inf")
    out = []
    for _ in range(repeat):
        t = time.process_time()
        out = [fn(it) for it in items]
        best = min(best, time.process_time() - t)
    return out, best / max(len(items), 1) * 1e6


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def image_codecs() -> list[tuple[str, callable, callable]]:
    name, comp, decomp = "raw + zstd", lambda b: zstd_encode(b, level=3), zstd_decode
    shape = {}

    def raw_enc(rgb):
        shape["s"] = rgb.shape
        return comp(rgb.tobytes())

    def cv2_png(params):
        return lambda im: cv2.imencode(".png", np.ascontiguousarray(im[..., ::-1]), params)[1].tobytes()

    return [
        ("PNG Sub + libdeflate 1 (default)", lambda im: encode_image(im, "png"), decode_image),
        ("PNG Sub + libdeflate 3", lambda im: encode_image(im, "png", png_compression=3), decode_image),
        ("PNG Sub + libdeflate 6", lambda im: encode_image(im, "png", png_compression=6), decode_image),
        ("PNG cv2 default (older shards)", cv2_png([]), decode_image),
        ("PNG cv2 compression 1", cv2_png([cv2.IMWRITE_PNG_COMPRESSION, 1]), decode_image),
        ("WebP lossless (method 0)", lambda im: webp_encode(im, level=0, lossless=True, method=0), webp_decode),
        ("JPEG q90", lambda im: encode_image(im, "jpeg", 90), decode_image),
        ("JPEG q95", lambda im: encode_image(im, "jpeg", 95), decode_image),
        ("QOI", lambda im: encode_image(im, "qoi"), decode_image),
        (name, raw_enc, lambda b: np.frombuffer(decomp(b), np.uint8).reshape(shape["s"])),
    ]


def _png16(m):
    ok, buf = cv2.imencode(".png", m.astype(np.uint16))
    return buf.tobytes()


def map_codecs() -> list[tuple[str, callable, callable]]:
    return [
        ("PNG 16-bit", _png16, decode_instance_map),
        ("PNG 8/16-bit", lambda m: encode_instance_map(m, "png"), decode_instance_map),
        ("raw int32 + zlib", lambda m: encode_instance_map(m, "zlib", np.int32), decode_instance_map),
        ("raw uint16 + zlib", lambda m: encode_instance_map(m, "zlib", np.uint16), decode_instance_map),
        ("raw uint8/16 + zlib (old default)", lambda m: encode_instance_map(m, "zlib"), decode_instance_map),
        ("raw uint8/16 + zstd (default)", lambda m: encode_instance_map(m, "zstd"), decode_instance_map),
    ]


def make_sample(cells: int, seed: int, out: str) -> str:
    from stx_platform.sources import list_samples
    from stx_platform.synth.generate import generate_set, plan

    generate_set(out, plan(slides=1, seed=seed, organs=("breast",), cells=cells), layout="hest", workers=1)
    return list_samples(out)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", help="ROOT#ID of an existing sample (default: build a synthetic one)")
    ap.add_argument("--cells", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--real", nargs="+", help="RGB H&E image files: also report image codec sizes and times on "
                                                 "their 256 px crops")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one core: what one Ray CPU worker gets

    from stx_platform.sources import read_sample

    with tempfile.TemporaryDirectory(prefix="stx-bench-") as tmp:
        t = time.perf_counter()
        ref = args.sample or make_sample(args.cells, args.seed, tmp)
        if not args.sample:
            print(f"built synthetic slide {ref} in {time.perf_counter() - t:.0f} s")
        sample = read_sample(ref)
        config = PatchConfig()
        stride = config.size
        while len(plan_patches(sample, config.model_copy(update={"stride": stride}))) < args.patches and stride > 64:
            stride //= 2
        config = config.model_copy(update={"stride": stride})
        print(f"{sample.sample_id}: {sample.wsi.width} x {sample.wsi.height} px at {sample.mpp} um/px, "
              f"{sample.n_cells} cells; patches {config.size} px at {config.mpp} um/px, stride {stride}")

        for fmt in ("qoi", "jpeg", "png"):  # png last: its lossless patches feed the codec comparison
            cfg = config.model_copy(update={"image_format": fmt})
            t, c = time.perf_counter(), time.process_time()
            tables = list(patches_for_sample(sample, cfg))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            n = sum(len(tb) for tb in tables)
            print(f"patches_for_sample, {fmt} images: {n} patches in {wall:.2f} s = {n / wall:.0f} patches/s "
                  f"(cpu {cpu:.2f} s; planning and tree included)")
        rows = [r for tb in tables for r in tb.select(["image", "instance_map", "nucleus_count"]).to_pylist()]
        rows = rows[:args.patches]

    images = [decode_image(r["image"]) for r in rows]
    maps = [decode_instance_map(r["instance_map"]) for r in rows]
    print(f"\n{len(images)} patches, {np.mean([r['nucleus_count'] for r in rows]):.1f} instances/patch on average, "
          f"max id {max(int(m.max()) for m in maps)}; times are best of 3, one core\n")

    print(f"{'image codec':31s} {'bytes/patch':>12s} {'encode us':>10s} {'decode us':>10s} {'PSNR dB':>8s}")
    for name, enc, dec in image_codecs():
        blobs, t_enc = _timed(enc, images)
        back, t_dec = _timed(dec, blobs)
        psnr = min(_psnr(a, b) for a, b in zip(images, back))
        print(f"{name:31s} {np.mean([len(b) for b in blobs]):12,.0f} {t_enc:10,.0f} {t_dec:10,.0f} "
              f"{'lossless' if psnr == float('inf') else f'{psnr:.1f}':>8s}")

    if args.real:
        s = 256
        crops = []
        for path in args.real:
            real = cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]
            crops += [np.ascontiguousarray(real[y:y + s, x:x + s]) for y in range(0, real.shape[0] - s + 1, s // 2)
                      for x in range(0, real.shape[1] - s + 1, s // 2)]
        print(f"\n{len(crops)} overlapping {s} px crops of {len(args.real)} real image(s):")
        print(f"{'image codec':31s} {'bytes/patch':>12s} {'encode us':>10s} {'decode us':>10s}")
        for name, enc, dec in image_codecs():
            blobs, t_enc = _timed(enc, crops)
            _, t_dec = _timed(dec, blobs)
            print(f"{name:31s} {np.mean([len(b) for b in blobs]):12,.0f} {t_enc:10,.0f} {t_dec:10,.0f}")

    print(f"\n{'instance map codec':31s} {'bytes/patch':>12s} {'encode us':>10s} {'decode us':>10s}")
    for name, enc, dec in map_codecs():
        blobs, t_enc = _timed(enc, maps)
        back, t_dec = _timed(dec, blobs)
        assert all(np.array_equal(a, b) for a, b in zip(maps, back)), name
        print(f"{name:31s} {np.mean([len(b) for b in blobs]):12,.0f} {t_enc:10,.0f} {t_dec:10,.0f}")


if __name__ == "__main__":
    main()
