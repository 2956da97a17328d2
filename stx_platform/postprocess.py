"""Nuclei instances from the three output maps of a HoVer-Net / CellViT model.

The HoVer-Net post-processing as CellViT uses it:

1. ``binary = binary_prob >= 0.5``; connected objects under 10 px are dropped;
2. each HV channel is min-max normalised to [0, 1]; Sobel derivatives, x of channel 0 and y of
   channel 1 (kernel 21 at 40x, 11 at 20x); each Sobel map becomes ``1 - minmax(sobel)``;
3. ``overall = max(sobel_h, sobel_v) - (1 - binary)``, clipped at 0;
4. ``dist = -GaussianBlur3x3((1 - overall) * binary)``;
5. ``markers = binary - (overall >= 0.4)`` (clipped at 0), holes filled, opened with a 5x5
   ellipse, labelled, objects under 10 px dropped;
6. ``watershed(dist, markers, mask=binary)``; ids are made consecutive (1..n).

Class per nucleus: the majority of the argmax of ``type_prob`` inside it; when background wins,
the next most frequent class (background only if nothing else occurs); ties go to the lower index.
Per-nucleus class probabilities are the mean of ``type_prob`` (softmax outputs) over its pixels.
Centroids are (x, y) = (mean column, mean row) of each nucleus' pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from stx_platform.taxonomy import PANNUKE_TYPE_ORDER

__all__ = ["instance_contours", "instances_from_maps", "nucleus_table", "sobel_ksize"]


def sobel_ksize(magnification: float) -> int:
    """Sobel kernel size: 21 at 40x, 11 at 20x (odd, 3..31, proportional otherwise)."""
    if magnification == 40:
        return 21
    if magnification == 20:
        return 11
    k = round(21 * magnification / 40)
    k += 1 - k % 2
    return int(min(max(k, 3), 31))


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64, copy=False)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labelled objects with fewer than ``min_size`` pixels set to 0 (as skimage's remove_small_objects)."""
    if min_size <= 1 or not labels.any():
        return labels
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _watershed_instances(binary_prob: np.ndarray, hv: np.ndarray, magnification: float,
                         min_size: int = 10, marker_threshold: float = 0.4) -> np.ndarray:
    blb = ndi.label(binary_prob >= 0.5)[0]
    blb = (_drop_small(blb, min_size) > 0).astype(np.float64)

    h_dir = _minmax(hv[0])
    v_dir = _minmax(hv[1])
    k = sobel_ksize(magnification)
    sobel_h = 1.0 - _minmax(cv2.Sobel(h_dir, cv2.CV_64F, 1, 0, ksize=k))
    sobel_v = 1.0 - _minmax(cv2.Sobel(v_dir, cv2.CV_64F, 0, 1, ksize=k))

    overall = np.maximum(sobel_h, sobel_v) - (1.0 - blb)
    overall[overall < 0] = 0
    dist = -cv2.GaussianBlur((1.0 - overall) * blb, (3, 3), 0)

    marker = blb - (overall >= marker_threshold)
    marker = ndi.binary_fill_holes(marker > 0).astype(np.uint8)
    marker = cv2.morphologyEx(marker, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    marker = _drop_small(ndi.label(marker)[0], min_size)
    return watershed(dist, markers=marker, mask=blb > 0)


def _consecutive(inst: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(inst, return_inverse=True)
    out = inv.reshape(inst.shape).astype(np.int32)
    if ids.size and ids[0] != 0:
        out += 1
    return out


def nucleus_table(inst: np.ndarray, type_prob: np.ndarray | None = None,
                  class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per nucleus of a consecutive (1..n) instance map: ``id``, ``class`` (type index,
    -1 without ``type_prob``), ``class_name``, ``x``, ``y`` (centroid), ``area`` and, with
    ``type_prob`` (C, H, W), ``prob_<name>`` = mean probability of each class inside the nucleus."""
    n = int(inst.max()) if inst.size else 0
    flat = inst.ravel()
    fg = np.flatnonzero(flat)
    lab = flat[fg].astype(np.int64)
    rows, cols = np.divmod(fg, inst.shape[1])
    area = np.bincount(lab, minlength=n + 1)[1:]
    safe = np.maximum(area, 1)
    cx = np.bincount(lab, weights=cols, minlength=n + 1)[1:] / safe
    cy = np.bincount(lab, weights=rows, minlength=n + 1)[1:] / safe
    table = {"id": np.arange(1, n + 1, dtype=np.int32), "class": np.full(n, -1, np.int64)}
    names = None
    probs = None
    if type_prob is not None:
        c = type_prob.shape[0]
        if class_names is None:
            class_names = PANNUKE_TYPE_ORDER if c == len(PANNUKE_TYPE_ORDER) else [str(i) for i in range(c)]
        names = list(class_names)
        if len(names) != c:
            raise ValueError(f"{len(names)} class names for {c} type channels")
        arg = np.argmax(type_prob, axis=0).ravel()[fg]
        counts = np.bincount(lab * c + arg, minlength=(n + 1) * c).reshape(n + 1, c)[1:]
        best = np.argmax(counts, axis=1)                        # ties -> lower index
        nonbg = np.argmax(counts[:, 1:], axis=1) + 1 if c > 1 else np.zeros(n, np.int64)
        has_other = counts[:, 1:].sum(1) > 0 if c > 1 else np.zeros(n, bool)
        table["class"] = np.where((best == 0) & has_other, nonbg, best).astype(np.int64)
        tp = type_prob.reshape(c, -1)[:, fg].astype(np.float64)
        probs = np.stack([np.bincount(lab, weights=tp[j], minlength=n + 1)[1:] / safe for j in range(c)], 1)
    table["class_name"] = [names[k] if names is not None and k >= 0 else "" for k in table["class"]]
    table["x"], table["y"], table["area"] = cx, cy, area.astype(np.int64)
    df = pd.DataFrame(table)
    if probs is not None:
        for j, name in enumerate(names):
            df[f"prob_{name}"] = probs[:, j]
    return df


def instances_from_maps(binary_prob: np.ndarray, hv: np.ndarray, type_prob: np.ndarray | None = None,
                        magnification: float = 40, class_names: Sequence[str] | None = None,
                        ) -> tuple[np.ndarray, pd.DataFrame]:
    """Instance map (H, W) int32 (ids 1..n) and a nucleus table (see :func:`nucleus_table`).

    ``binary_prob`` (H, W): foreground probability; ``hv`` (2, H, W): channel 0 horizontal,
    channel 1 vertical; ``type_prob`` (C, H, W): per-class probabilities, index 0 background
    (PanNuke order by default), or None.
    """
    binary_prob = np.asarray(binary_prob)
    hv = np.asarray(hv)
    if binary_prob.ndim != 2 or hv.shape != (2,) + binary_prob.shape:
        raise ValueError(f"expected binary (H, W) and hv (2, H, W); got {binary_prob.shape} and {hv.shape}")
    if type_prob is not None:
        type_prob = np.asarray(type_prob)
        if type_prob.ndim != 3 or type_prob.shape[1:] != binary_prob.shape:
            raise ValueError(f"type_prob must be (C, H, W) with (H, W) = {binary_prob.shape}, got {type_prob.shape}")
    inst = _consecutive(_watershed_instances(binary_prob, hv, magnification))
    return inst, nucleus_table(inst, type_prob, class_names)


def instance_contours(inst: np.ndarray, ids: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Outer boundary of each nucleus (or of ``ids``) of an instance map: ``{id: (k, 2) float (x, y)
    vertices}`` through the centres of its boundary pixels (the largest piece when a nucleus is
    split; a one-pixel-thin nucleus, which has no area between pixel centres, gets its pixel box)."""
    boxes = ndi.find_objects(np.asarray(inst, np.int64))
    out: dict[int, np.ndarray] = {}
    for i in (range(1, len(boxes) + 1) if ids is None else ids):
        sl = boxes[i - 1] if 0 < i <= len(boxes) else None
        if sl is None:
            continue
        mask = (inst[sl] == i).astype(np.uint8)
        found, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        ring = max(found, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
        if len(ring) < 3 or cv2.contourArea(ring.astype(np.float32)) == 0:
            h, w = mask.shape
            ring = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
        out[int(i)] = ring + (sl[1].start, sl[0].start)
    return out
