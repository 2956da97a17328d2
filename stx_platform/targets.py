"""Training targets of a HoVer-Net / CellViT model from an instance map.

Conventions (shared with :mod:`stx_platform.postprocess` and :mod:`stx_platform.metrics`):

* instance maps are (H, W) integer arrays, 0 = background, any positive id = one nucleus;
* the type map uses :data:`~stx_platform.taxonomy.PANNUKE_TYPE_ORDER` (0 Background,
  1 Neoplastic, 2 Inflammatory, 3 Connective, 4 Dead, 5 Epithelial); nuclei whose class is
  ``Unknown`` (or any negative index) get ``unknown_index`` (default -1) in the type map, the
  value the type loss ignores (e.g. ``ignore_index=-1``);
* the HV map is (2, H, W) float32, channel 0 horizontal (x, along columns), channel 1 vertical
  (y, along rows). Per nucleus: x = column - round(com_x), y = row - round(com_y), with the centre
  of mass rounded half up; negative values are divided by |min|, positive ones by max, per axis
  and per nucleus, so each lies in [-1, 1]; background is 0. The targets do not depend on how a
  loss (MSE, MSGE) later differentiates them.

``hv_map`` is vectorised over nuclei; ``hv_map_loop`` is the per-nucleus reference (bounding box
crop, centre of mass, normalise each side) that tests and the benchmark compare it with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from stx_platform.taxonomy import PANNUKE_TYPE_ORDER, UNKNOWN

__all__ = ["binary_map", "class_lut", "hv_map", "hv_map_loop", "targets", "type_map"]


def _check_inst(inst: np.ndarray) -> np.ndarray:
    inst = np.asarray(inst)
    if inst.ndim != 2:
        raise ValueError(f"instance map must be 2-D (H, W), got shape {inst.shape}")
    if inst.dtype.kind not in "iu":
        if inst.dtype.kind == "b":
            return inst.astype(np.int32)
        raise ValueError(f"instance map must hold integers, got {inst.dtype}")
    if inst.dtype.kind == "i" and inst.size and inst.min() < 0:
        raise ValueError("instance map holds negative ids")
    return inst


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive labels (1-D) -> (sorted unique ids, index of each label into them)."""
    if labels.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.intp)
    top = int(labels.max())
    if top <= 4 * labels.size + 1024:  # dense ids: a lookup table beats sorting
        present = np.bincount(labels, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(ids.size)
        return ids.astype(np.int64), lut[labels]
    ids, inv = np.unique(labels, return_inverse=True)
    return ids.astype(np.int64), inv


def binary_map(inst: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 1 inside any nucleus, 0 elsewhere."""
    return (_check_inst(inst) > 0).astype(np.uint8)


def _offset_table(idx: np.ndarray, n: int, size: int) -> np.ndarray:
    """``idx = nucleus * size + coordinate`` per foreground pixel -> (n, size) float32 table of each
    coordinate's normalised offset from the nucleus' rounded centre of mass (one axis)."""
    counts = np.bincount(idx, minlength=n * size).reshape(n, size)
    pos = np.arange(size)
    com = np.floor((counts @ pos) / np.maximum(counts.sum(1), 1) + 0.5).astype(np.int64)
    seen = counts > 0
    lo = com - seen.argmax(1)                                 # -(most negative offset), >= 0
    hi = (size - 1 - seen[:, ::-1].argmax(1)) - com           # most positive offset, >= 0
    d = pos - com[:, None]
    scale = np.where(d < 0, lo[:, None], hi[:, None]).astype(np.float64)
    return np.divide(d, scale, out=np.zeros(d.shape, np.float64), where=scale != 0).astype(np.float32)


def hv_map(inst: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Horizontal/vertical distance map (2, H, W) float32, vectorised over nuclei (into ``out`` when given).

    Per axis, one bincount of (nucleus, coordinate) over the foreground pixels gives each nucleus'
    area, centre of mass and extent, hence a (nuclei, H or W) table of offsets, gathered per pixel.
    """
    inst = _check_inst(inst)
    h, w = inst.shape
    if out is None:
        out = np.zeros((2, h, w), np.float32)
    elif out.shape != (2, h, w) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float32 array of shape {(2, h, w)}, got {out.dtype} {out.shape}")
    else:
        out[...] = 0
    flat = np.flatnonzero(inst.ravel() != 0)
    if flat.size == 0:
        return out
    labels = inst.ravel()[flat].astype(np.intp)
    top = int(labels.max())
    if (top + 1) * max(h, w) <= 4 * labels.size + 65536:     # small ids: tables indexed by id as is
        k, n = labels, top + 1
    else:
        _, k = _compact(labels)
        n = int(k.max()) + 1
    rows, cols = np.divmod(flat, w)
    for ch, coord, size in ((0, cols, w), (1, rows, h)):
        idx = k * size + coord
        out[ch].ravel()[flat] = _offset_table(idx, n, size).ravel()[idx]
    return out


def hv_map_loop(inst: np.ndarray, pad: int = 2) -> np.ndarray:
    """Reference HV map: one nucleus at a time (bounding box crop, centre of mass, normalise)."""
    inst = _check_inst(inst)
    h, w = inst.shape
    x_map = np.zeros((h, w), np.float64)
    y_map = np.zeros((h, w), np.float64)
    for nid in np.unique(inst[inst > 0]):
        mask = inst == nid
        rr, cc = np.nonzero(mask)
        r0, r1 = max(rr.min() - pad, 0), min(rr.max() + 1 + pad, h)
        c0, c1 = max(cc.min() - pad, 0), min(cc.max() + 1 + pad, w)
        box = mask[r0:r1, c0:c1]
        com_y, com_x = ndi.center_of_mass(box)
        com_x, com_y = int(np.floor(com_x + 0.5)), int(np.floor(com_y + 0.5))
        xs = np.arange(box.shape[1]) - com_x
        ys = np.arange(box.shape[0]) - com_y
        gx, gy = np.meshgrid(xs, ys)
        gx = np.where(box, gx, 0).astype(np.float64)
        gy = np.where(box, gy, 0).astype(np.float64)
        for g in (gx, gy):
            neg, pos = g < 0, g > 0
            if neg.any():
                g[neg] /= -g[neg].min()
            if pos.any():
                g[pos] /= g[pos].max()
        x_map[r0:r1, c0:c1][box] = gx[box]
        y_map[r0:r1, c0:c1][box] = gy[box]
    return np.stack([x_map, y_map]).astype(np.float32)


def _class_index(c, type_order: Sequence[str], unknown_index: int) -> int:
    if isinstance(c, (str, np.str_)):
        if c == UNKNOWN:
            return unknown_index
        try:
            return type_order.index(str(c))
        except ValueError:
            raise ValueError(f"unknown class name {c!r}; expected one of {list(type_order)} or {UNKNOWN!r}") from None
    ci = int(c)
    return unknown_index if ci < 0 else ci


def class_lut(inst: np.ndarray, classes, type_order: Sequence[str] = PANNUKE_TYPE_ORDER,
              unknown_index: int = -1) -> np.ndarray:
    """Class lookup table ``lut`` (int64) with ``lut[id]`` = class index of instance ``id``.

    ``classes`` is either a mapping ``{instance id: class}`` (every id in ``inst`` must be a key)
    or an array/sequence indexed by instance id (length > max id; entry 0 is ignored). A class is
    an index into ``type_order`` or a name from it; ``"Unknown"`` and negative indices become
    ``unknown_index``. ``lut[0]`` is 0 (background).
    """
    inst = _check_inst(inst)
    top = int(inst.max()) if inst.size else 0
    if isinstance(classes, Mapping):
        lut = np.full(top + 1, np.iinfo(np.int64).min, np.int64)
        for k, c in classes.items():
            k = int(k)
            if 0 < k <= top:
                lut[k] = _class_index(c, type_order, unknown_index)
        present = np.flatnonzero(np.bincount(inst.ravel(), minlength=top + 1)[1:]) + 1
        missing = present[lut[present] == np.iinfo(np.int64).min]
        if missing.size:
            raise ValueError(f"{missing.size} instance ids have no class (first: {missing[:5].tolist()})")
        lut[lut == np.iinfo(np.int64).min] = unknown_index
    else:
        arr = np.asarray(classes)
        if arr.ndim != 1 or arr.shape[0] <= top:
            raise ValueError(f"classes as an array must be indexed by instance id: length > max id {top}, "
                             f"got shape {arr.shape}")
        if arr.dtype.kind in "iu":
            lut = arr.astype(np.int64).copy()
            lut[lut < 0] = unknown_index
        else:
            lut = np.array([_class_index(c, type_order, unknown_index) for c in arr], np.int64)
    lut[0] = 0
    return lut


def type_map(inst: np.ndarray, classes, unknown_index: int = -1,
             type_order: Sequence[str] = PANNUKE_TYPE_ORDER) -> np.ndarray:
    """(H, W) int64 type map: 0 background, the class index inside each nucleus, ``unknown_index``
    for Unknown nuclei. ``classes`` as in :func:`class_lut`."""
    inst = _check_inst(inst)
    return class_lut(inst, classes, type_order, unknown_index)[inst]


def targets(inst: np.ndarray, classes, unknown_index: int = -1,
            type_order: Sequence[str] = PANNUKE_TYPE_ORDER, *,
            out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All targets of one patch: ``binary`` (H, W) uint8, ``hv`` (2, H, W) float32, ``type`` (H, W) int64.

    ``out``: preallocated ``binary`` (H, W, any integer dtype), ``hv`` (2, H, W) float32 and ``type``
    (H, W, any signed integer dtype wide enough for the classes and ``unknown_index``) to write the
    same values into (e.g. rows of a batch); returned as a dict.
    """
    inst = _check_inst(inst)
    if out is None:
        return {"binary": binary_map(inst), "hv": hv_map(inst),
                "type": type_map(inst, classes, unknown_index, type_order)}
    np.greater(inst, 0, out=out["binary"])
    hv_map(inst, out=out["hv"])
    lut = class_lut(inst, classes, type_order, unknown_index)
    np.take(lut.astype(out["type"].dtype, copy=False), inst, out=out["type"], mode="clip")
    return dict(out)
