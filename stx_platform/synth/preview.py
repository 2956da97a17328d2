"""The per-slide truth picture: the slide overview beside a full-resolution zoom whose nuclei
are outlined in their ground-truth class colour, with a legend."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np

from stx_platform.synth.render import SlideRenderer
from stx_platform.synth.slide import SyntheticSlide
from stx_platform.taxonomy import LABEL_CLASSES
from stx_platform.viz import caption, hstack, legend, outline_nuclei


def pick_zoom(slide: SyntheticSlide, size: int) -> tuple[int, int]:
    """Top-left of the ``size`` px window holding the most mixed set of classes (deterministic)."""
    cls = slide.cells.pannuke_class()
    px = slide.cells.xy / slide.mpp
    best, best_xy = -1.0, (0, 0)
    step = max(size // 2, 64)
    for y in range(0, max(slide.height_px - size, 0) + 1, step):
        for x in range(0, max(slide.width_px - size, 0) + 1, step):
            sel = (px[:, 0] >= x) & (px[:, 0] < x + size) & (px[:, 1] >= y) & (px[:, 1] < y + size)
            c = Counter(cls[sel])
            n = sum(c.values())
            if n == 0:
                continue
            p = np.array(list(c.values())) / n
            score = float(-(p * np.log(p)).sum()) + 0.002 * n
            if score > best:
                best, best_xy = score, (x, y)
    return best_xy


def truth_preview(slide: SyntheticSlide, overview: np.ndarray, renderer: SlideRenderer, zoom: int = 900) -> np.ndarray:
    zoom = min(zoom, slide.width_px, slide.height_px)
    x0, y0 = pick_zoom(slide, zoom)
    crop = renderer.render(x0, y0, zoom, zoom)
    cls = slide.cells.pannuke_class()
    px = slide.nuc_he_px
    c = px.mean(1)
    sel = np.flatnonzero((c[:, 0] > x0 - 20) & (c[:, 0] < x0 + zoom + 20) & (c[:, 1] > y0 - 20) & (c[:, 1] < y0 + zoom + 20))
    drawn = outline_nuclei(crop, [px[i] for i in sel], cls[sel], offset=(x0, y0), width=2)
    ov = overview.copy()
    k = ov.shape[1] / slide.width_px
    cv2.rectangle(ov, (int(x0 * k), int(y0 * k)), (int((x0 + zoom) * k), int((y0 + zoom) * k)), (0, 0, 0), 2)
    scale = zoom / max(ov.shape[:2])
    if scale < 1:
        ov = cv2.resize(ov, (int(ov.shape[1] * scale), int(ov.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    counts = Counter(cls)
    panels = [
        caption(ov, f"{slide.sample_id} ({slide.recipe.key}, {slide.n_cells} cells, {slide.mpp} um/px)"),
        caption(crop, f"H&E, x={x0} y={y0}, {zoom} px"),
        caption(drawn, "nuclei outlined by ground-truth class"),
        caption(legend(list(LABEL_CLASSES), counts), "class (cells on slide)"),
    ]
    return hstack(panels)
