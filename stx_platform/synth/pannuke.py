"""A synthetic PanNuke-format fold for validation, in a stain style unlike the training slides.

Files (PanNuke, Gamper et al. 2019/2020): ``images.npy`` (K, 256, 256, 3) uint8 RGB at 40x
(0.25 um/px), ``masks.npy`` (K, 256, 256, 6) with instance ids of Neoplastic, Inflammatory,
Connective, Dead and Epithelial nuclei in channels 0-4 and a binary background in channel 5,
``types.npy`` (K,) tissue names. Each image is a crop of a small synthetic section rendered
with the 'pannuke' stain (bluer haematoxylin, redder eosin, lighter); masks come from the very
polygons the renderer filled, so they are exact. A few tumour nuclei are made apoptotic
(small, pyknotic) and labelled Dead, a class the training labels never contain.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from stx_platform import storage
from stx_platform.synth import layout as L
from stx_platform.synth.nuclei import sample_shapes
from stx_platform.synth.slide import build_slide
from stx_platform.taxonomy import DEAD, PANNUKE_CHANNELS

PANNUKE_MPP = 0.25
SIZE = 256
#: PanNuke tissue name -> organ recipe used to draw it
TISSUES = {"Breast": "breast", "Colon": "colon", "Kidney": "kidney", "Liver": "liver", "Lung": "lung",
           "Ovarian": "ovary", "Pancreatic": "pancreas", "Prostate": "prostate", "Skin": "skin",
           "Stomach": "stomach", "Thyroid": "thyroid", "Uterus": "uterus"}


def _make_dead(slide, rng, frac=0.04) -> np.ndarray:
    """Turn a share of tumour cells into apoptotic bodies; returns the per-cell class."""
    cls = slide.cells.pannuke_class().astype(object)
    # ambiguous cells still have a true type: the fold labels every nucleus
    true_cls = np.array([slide.cells.catalogue[t].pannuke_class for t in slide.cells.type_name], dtype=object)
    cls = np.where(cls == "Unknown", true_cls, cls)
    tum = np.flatnonzero(slide.cells.compartment == L.TUMOUR)
    dead = tum[rng.uniform(0, 1, len(tum)) < frac]
    if len(dead):
        sh = slide.cells.shapes
        new = sample_shapes(np.array(["dead"] * len(dead)), sh.center[dead], sh.angle[dead], rng)
        for f in sh.__dataclass_fields__:
            getattr(sh, f)[dead] = getattr(new, f)
        slide.nuc_he_px[dead] = new.polygons(slide.nuc_he_px.shape[1]) / slide.mpp
        cls[dead] = DEAD
    return cls


def _instance_masks(slide, cls, x0, y0) -> np.ndarray:
    c = slide.nuc_he_px.mean(1)
    sel = np.flatnonzero((c[:, 0] > x0 - 40) & (c[:, 0] < x0 + SIZE + 40) & (c[:, 1] > y0 - 40) & (c[:, 1] < y0 + SIZE + 40))
    inst = np.zeros((SIZE, SIZE), np.int32)
    for i in np.sort(sel):  # the renderer's drawing order, so overlaps resolve the same way
        pts = np.round((slide.nuc_he_px[i] - (x0, y0)) * 16).astype(np.int32)
        cv2.fillPoly(inst, [pts], int(i) + 1, cv2.LINE_8, 4)
    masks = np.zeros((SIZE, SIZE, 6), np.int32)
    ids = np.unique(inst[inst > 0])
    for k, cid in enumerate(ids, 1):
        ch = PANNUKE_CHANNELS.index(cls[cid - 1])
        masks[..., ch][inst == cid] = k
    masks[..., 5] = (inst == 0).astype(np.int32)
    return masks


def make_fold(n: int, seed: int = 0, tissues: list[str] | None = None, progress=None):
    """Arrays (images, masks, types) of a synthetic fold with ``n`` images."""
    tissues = tissues or list(TISSUES)
    rng = np.random.default_rng([seed, 4242])
    per = int(np.ceil(n / len(tissues)))
    images, masks, types = [], [], []
    for t_i, tissue in enumerate(tissues):
        want = min(per, n - len(images))
        if want <= 0:
            break
        slide = build_slide(f"PN{t_i:02d}", TISSUES[tissue], seed * 1000 + 500 + t_i, n_cells=max(400, 70 * want),
                            mpp=PANNUKE_MPP, tumour=bool(rng.uniform() < 0.75), stain_style="pannuke")
        cls = _make_dead(slide, rng)
        renderer = slide.renderer()
        centres = slide.nuc_he_px.mean(1)
        got = 0
        for _ in range(want):
            # PanNuke's curators favoured cellular fields: take the densest of a few random windows
            cand = np.stack([rng.integers(0, max(1, slide.width_px - SIZE), 8),
                             rng.integers(0, max(1, slide.height_px - SIZE), 8)], 1)
            dens = [((centres[:, 0] > x) & (centres[:, 0] < x + SIZE) & (centres[:, 1] > y) &
                     (centres[:, 1] < y + SIZE)).sum() for x, y in cand]
            x0, y0 = (int(v) for v in cand[int(np.argmax(dens))])
            images.append(renderer.render(x0, y0, SIZE, SIZE))
            masks.append(_instance_masks(slide, cls, x0, y0))
            types.append(tissue)
            got += 1
        if progress:
            progress(f"{tissue}: {got} images")
    return np.stack(images), np.stack(masks), np.array(types)


def write_pannuke_fold(out: str, n: int, seed: int = 0, progress=None) -> dict:
    """Write ``images.npy``, ``masks.npy``, ``types.npy`` under ``out``; returns a summary."""
    images, masks, types = make_fold(n, seed, progress=progress)
    for name, arr in (("images.npy", images), ("masks.npy", masks), ("types.npy", types)):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        storage.write_bytes(storage.join(out, name), buf.getvalue())
    nuclei = {ch: int(sum(len(np.unique(m[..., i])) - 1 for m in masks)) for i, ch in enumerate(PANNUKE_CHANNELS[:5])}
    return {"images": int(len(images)), "tissues": sorted(set(types.tolist())), "nuclei": nuclei}
