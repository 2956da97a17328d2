"""The pictures of docs/synthetic.md: real H&E tiles beside synthetic fields at the same scale,
each synthetic field rendered by this renderer and (``--baseline REV``) by ``render.py`` as of
git revision REV, from the same slide, cells and stain.

    python bench/synth_gallery.py --out docs/synthetic_gallery.jpg --baseline 0f5c2ee
    python bench/synth_gallery.py --stats --baseline 0f5c2ee     # stain calibration table

``--stats`` prints, for the real NuCLS tiles (manual masks) and for 12 random 256 px fields per
of the embedded default's organs, centred on random cells (nuclei from the slide's polygons), the median and 90th
percentile haematoxylin of nucleus pixels and the median eosin of other tissue pixels, each in
the image's own Macenko basis (least-squares concentrations).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(os.environ.get("STX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "data" / "real"
# (organ, seed, compartment to centre on): tumour nests, stroma, a vessel, alveoli
FIELDS = [("breast", 21, "TUMOUR"), ("breast", 4, "STROMA"), ("colon", 3, "VESSEL_LUMEN"), ("lung", 2, "EPITHELIUM")]


def _window(slide, comp: int, size: int) -> tuple[int, int]:
    """Top-left of a ``size`` px window centred on the cell-richest point of compartment ``comp``."""
    xy = slide.cells.xy[slide.cells.compartment == comp] / slide.mpp
    if not len(xy):
        return slide.width_px // 2 - size // 2, slide.height_px // 2 - size // 2
    n = [(((np.abs(xy - p) < size / 2).all(1)).sum(), i) for i, p in enumerate(xy[::7])]
    cx, cy = xy[::7][max(n)[1]]
    return _box(slide, cx, cy, size)


def _box(slide, cx: float, cy: float, size: int) -> tuple[int, int]:
    """Top-left of the ``size`` px window centred on (cx, cy) px, kept inside the slide."""
    return (int(np.clip(cx - size / 2, 0, slide.width_px - size)),
            int(np.clip(cy - size / 2, 0, slide.height_px - size)))


def _field_stats(img: np.ndarray, nuclei: np.ndarray) -> list[float] | None:
    from stx_platform import stain

    he = stain.macenko(img)
    if he is None or nuclei.sum() < 150:
        return None
    c = stain.concentrations(img, he).reshape(-1, 2)
    nuc = nuclei.ravel() > 0
    tissue = (stain.optical_density(img).reshape(-1, 3) > 0.15).all(1) & ~nuc
    return [float(np.median(c[nuc, 0])), float(np.percentile(c[nuc, 0], 90)), float(np.median(c[tissue, 1]))]


def _row(name: str, rows: list[list[float]]) -> None:
    m = np.mean(rows, axis=0)
    print(f"| {name} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {len(rows)} |")


def stats(baseline: str | None, size: int = 256) -> None:
    import cv2

    from stx_platform.sources.tiles import TileFolder
    from stx_platform.synth.slide import build_slide
    from synth import baseline_renderer

    print("| source | nucleus H, median | nucleus H, 90th pct. | tissue E, median | fields |")
    print("|---|---|---|---|---|")
    if (SHARED / "nucls_breast").exists():
        t = TileFolder(str(SHARED / "nucls_breast"))
        rows = [r for r in (_field_stats(t[i].image, t[i].instances) for i in range(len(t))) if r]
        _row("real NuCLS breast tiles", rows)
    for organ, seed in (("breast", 0), ("colon", 1), ("lung", 2), ("kidney", 3)):
        slide = build_slide("S", organ, seed, 3000, mpp=0.25)
        rends = {"now": slide.renderer()}
        if baseline:
            rends[baseline] = baseline_renderer(slide, baseline)
        rng = np.random.default_rng(0)
        centres = slide.cells.xy[rng.choice(len(slide.cells.xy), 12, replace=False)] / slide.mpp
        boxes = [_box(slide, x, y, size) for x, y in centres]
        for name, r in rends.items():
            rows = []
            for x0, y0 in boxes:
                m = np.zeros((size, size), np.uint8)
                for p in slide.nuc_he_px:
                    q = p - (x0, y0)
                    if (q.max(0) > 0).all() and (q.min(0) < size).all():
                        cv2.fillPoly(m, [np.round(q).astype(np.int32)], 1)
                row = _field_stats(r.render(x0, y0, size, size), m)
                if row:
                    rows.append(row)
            _row(f"synthetic {organ}, {name}", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/synthetic_gallery.jpg")
    ap.add_argument("--baseline", default=None, metavar="REV")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--stats", action="store_true", help="print the stain calibration table instead")
    args = ap.parse_args()
    if args.stats:
        return stats(args.baseline, args.size)

    from PIL import Image

    from stx_platform.synth import layout as L
    from stx_platform.synth.slide import build_slide
    from stx_platform.viz import caption, hstack, vstack
    from synth import baseline_renderer

    s = args.size
    real = []
    for name in ("train/train_1.png", "train/train_5.png", "test/test_2.png"):
        f = SHARED / "nucls_breast" / name
        if f.exists():
            real.append(caption(np.asarray(Image.open(f).convert("RGB"))[:s, :s], f"real: NuCLS {f.stem}"))
    he = SHARED / "he_histo_300x500.jpg"
    if he.exists():
        real.append(caption(np.asarray(Image.open(he).convert("RGB"))[:s, :s], "real: stardist H&E"))
    rows = [hstack(real)] if real else []
    new, old = [], []
    for organ, seed, comp in FIELDS:
        slide = build_slide("G", organ, seed, 1500, mpp=0.25)
        x0, y0 = _window(slide, getattr(L, comp), s)
        where = comp.lower().replace("_lumen", "")
        new.append(caption(slide.renderer().render(x0, y0, s, s), f"synthetic {organ}, {where}"))
        if args.baseline:
            old.append(caption(baseline_renderer(slide, args.baseline).render(x0, y0, s, s),
                               f"before ({args.baseline}): {organ}"))
    rows.append(hstack(new))
    if old:
        rows.append(hstack(old))
    Image.fromarray(vstack(rows)).save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
