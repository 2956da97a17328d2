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

``hv_map`` and ``targets`` run compiled (numba): one pass over each row's runs of equal ids, found
a 64-bit word of pixels at a time, then one over each nucleus' bounding box; ``targets`` can write
the HV map as float16 directly (the training ingest sends it so). ``hv_map_loop`` is the
per-nucleus reference (bounding box crop, centre of mass, normalise each side) that tests and the
benchmark compare them with.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numba
import numpy as np
from scipy import ndimage as ndi

from stx_platform.taxonomy import PANNUKE_TYPE_ORDER, UNKNOWN

__all__ = ["binary_map", "class_lut", "half_table", "hv_map", "hv_map_loop", "targets", "type_map"]


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


@numba.njit(cache=True, nogil=True, inline="always")
def _first_other(words, r, c, v, bits, shift, w):
    """The first column >= ``c`` of row ``r`` whose pixel differs from ``v`` (``w`` when none):
    ``words`` holds the row's pixels packed ``2**shift`` to a little-endian 64-bit word, ``bits``
    each, so a word at a time is compared (``v`` repeated in every pixel of a word)."""
    per = 1 << shift
    j = c >> shift
    x = (words[r, j] ^ v) >> np.uint64(bits * (c & (per - 1)))
    while x == 0:
        j += 1
        if j == words.shape[1]:
            return w
        x = words[r, j] ^ v
    k = 0                                    # the first differing pixel of the word
    if bits < 64:
        mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
        while (x & mask) == 0:
            x >>= np.uint64(bits)
            k += 1
    return min(w, (j << shift) + (c & (per - 1) if j == c >> shift else 0) + k)


@numba.njit(cache=True, nogil=True)
def _extents(inst, words, shift, n):
    """One pass over each row's runs of equal nonzero ids (found a word at a time,
    :func:`_first_other`) -> per id: centre of mass (cx, cy) rounded as ``floor(sum / count +
    0.5)`` in float64, and extent (x0, x1, y0, y1), all int64 (x1 = -1 for an absent id)."""
    h, w = inst.shape
    bits = 64 >> shift
    ones = np.uint64(1)                      # 1 in every pixel of a word
    for _ in range((1 << shift) - 1):
        ones = (ones << np.uint64(bits)) | np.uint64(1)
    cnt = np.zeros(n, np.int64)
    sx = np.zeros(n, np.int64)
    sy = np.zeros(n, np.int64)
    x0 = np.full(n, w, np.int64)
    x1 = np.full(n, -1, np.int64)
    y0 = np.full(n, h, np.int64)
    y1 = np.full(n, -1, np.int64)
    for r in range(h):
        c = _first_other(words, r, 0, np.uint64(0), bits, shift, w)
        while c < w:
            k = inst[r, c]
            e = _first_other(words, r, c, np.uint64(k) * ones, bits, shift, w)
            m = e - c
            cnt[k] += m
            sx[k] += (c + e - 1) * m // 2
            sy[k] += r * m
            x0[k] = min(x0[k], c)
            x1[k] = max(x1[k], e - 1)
            y0[k] = min(y0[k], r)
            y1[k] = max(y1[k], r)
            c = _first_other(words, r, e, np.uint64(0), bits, shift, w) if e < w else w
    cx = np.zeros(n, np.int64)
    cy = np.zeros(n, np.int64)
    for k in range(n):
        if cnt[k]:
            cx[k] = np.int64(np.floor(sx[k] / cnt[k] + 0.5))
            cy[k] = np.int64(np.floor(sy[k] / cnt[k] + 0.5))
    return cx, cy, x0, x1, y0, y1


@numba.njit(cache=True, nogil=True, inline="always")
def _offset(d, neg, pos, half, table):
    """HV value of offset ``d`` on a side of extents ``neg`` (d < 0) / ``pos`` (d > 0): ``d / m``
    in float64 (stored as float32 by the caller), or with ``table`` the float16 bits
    ``half[m, |d|]``, sign bit set for d < 0 (:func:`half_table`)."""
    if table:
        return np.float64((half[neg, -d] | 0x8000) if d < 0 else half[pos, d])
    return d / neg if d < 0 else (d / pos if d > 0 else 0.0)


@numba.njit(cache=True, nogil=True)
def _fill(inst, words, shift, n, lut, half, binary, hv, typ, with_classes):
    """:func:`_extents`, the outputs zeroed, then each nucleus' bounding box visited: its pixels
    get their HV offsets (and, ``with_classes``, 1 in the binary map, ``lut[id]`` in the type
    map). Arithmetic as the module docstring states: an offset ``d`` on a side of extent ``m`` is
    ``d / m`` in float64 rounded once to float32, or, when ``half`` has rows (``hv`` then uint16),
    the float16 bits of that value (:func:`_offset`)."""
    h, w = inst.shape
    cx, cy, x0, x1, y0, y1 = _extents(inst, words, shift, n)
    table = half.shape[0] > 1
    hv[:] = 0
    if with_classes:
        binary[:] = 0
        typ[:] = 0
    xv = np.empty_like(hv[0, 0])
    for k in range(1, n):
        if x1[k] < 0:
            continue
        kx, ky, t = cx[k], cy[k], lut[k] if with_classes else 0
        for c in range(x0[k], x1[k] + 1):
            xv[c] = _offset(c - kx, kx - x0[k], x1[k] - kx, half, table)
        for r in range(y0[k], y1[k] + 1):
            vy = _offset(r - ky, ky - y0[k], y1[k] - ky, half, table)
            for c in range(x0[k], x1[k] + 1):
                if inst[r, c] == k:
                    hv[0, r, c] = xv[c]
                    hv[1, r, c] = vy
                    if with_classes:
                        binary[r, c] = 1
                        typ[r, c] = t


def _words(inst: np.ndarray) -> tuple[np.ndarray, int]:
    """(the instance map's rows as little-endian 64-bit words, log2 of the pixels per word) for
    :func:`_first_other`: a view of the map's memory when its rows allow one, else a zero-padded
    copy."""
    per = 8 // inst.itemsize
    if inst.flags.c_contiguous and inst.shape[1] % per == 0 and inst.size and inst.dtype.byteorder in "=<|" \
            and sys.byteorder == "little":
        return inst.view(np.uint64), per.bit_length() - 1
    h, w = inst.shape
    padded = np.zeros((h, max(1, -(-w // per)) * per), inst.dtype.newbyteorder("<"))
    padded[:, :w] = inst
    return padded.view(np.uint64), per.bit_length() - 1


@lru_cache(maxsize=4)
def half_table(size: int) -> np.ndarray:
    """(size, size) uint16: entry [m, a] (0 <= a <= m) = the float16 bits of ``a / m`` computed as
    :func:`hv_map` does (float64, rounded to float32) and then cast to float16 (round to nearest
    even, as numpy and torch cast): a float16 HV map without a float32 one in between. Row 0 and
    entries a > m are 0 (never read)."""
    m = np.arange(size, dtype=np.int64)[:, None]
    a = np.arange(size, dtype=np.int64)[None, :]
    q = np.divide(a, m, out=np.zeros((size, size)), where=(a <= m) & (m > 0))
    t = q.astype(np.float32).astype(np.float16).view(np.uint16)
    t.flags.writeable = False
    return t


def _dense_ids(inst: np.ndarray) -> tuple[np.ndarray, int]:
    """(instance map whose ids index small tables, table length): as is when the ids are at most a
    few times the pixel count, else renumbered 1..n in id order."""
    top = int(inst.max()) if inst.size else 0
    if top <= 4 * inst.size + 1024:
        return inst, top + 1
    flat = inst.ravel()
    fg = flat != 0
    k = np.zeros(flat.shape, np.intp)
    ids, k[fg] = _compact(flat[fg].astype(np.int64))
    k[fg] += 1
    return k.reshape(inst.shape), ids.size + 1


def _hv_out(out: np.ndarray | None, h: int, w: int, dtypes=(np.float32,)) -> np.ndarray:
    if out is None:
        return np.empty((2, h, w), np.float32)
    if out.shape != (2, h, w) or out.dtype not in dtypes or not out.flags.c_contiguous:
        names = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"out must be a contiguous {names} array of shape {(2, h, w)}, got {out.dtype} {out.shape}")
    return out


_NO_MAP = np.zeros((1, 1), np.uint8)
_NO_LUT = np.zeros(1, np.int64)
_NO_TABLE = np.zeros((1, 1), np.uint16)


def hv_map(inst: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Horizontal/vertical distance map (2, H, W) float32 (into ``out`` when given): two passes
    over the pixels (compiled; numba caches the machine code on disk, so a process compiles it
    once per dtype and the next ones load it)."""
    inst = _check_inst(inst)
    out = _hv_out(out, *inst.shape)
    dense, n = _dense_ids(inst)
    _fill(dense, *_words(dense), n, _NO_LUT, _NO_TABLE, _NO_MAP, out, _NO_MAP, False)
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


@lru_cache(maxsize=8)
def _name_index(type_order: tuple[str, ...], unknown_index: int) -> dict[str, int]:
    """{class name: index} of ``type_order``, Unknown included: one dict lookup per nucleus."""
    return {**{c: i for i, c in enumerate(type_order)}, UNKNOWN: unknown_index}


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
            index = _name_index(tuple(type_order), unknown_index)
            try:
                lut = np.fromiter((index[c] for c in arr), np.int64, len(arr))
            except (KeyError, TypeError):  # not all names: indices among them, or a bad name to report
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

    ``out``: preallocated ``binary`` (H, W, any integer dtype), ``hv`` (2, H, W) float32 or float16
    and ``type`` (H, W, any signed integer dtype wide enough for the classes and ``unknown_index``)
    to write the same values into (e.g. rows of a batch); returned as a dict. A float16 ``hv``
    holds the float32 map cast to float16 (round to nearest even, bit for bit as numpy's and
    torch's casts), written directly (:func:`half_table`): the training ingest sends it so.
    """
    inst = _check_inst(inst)
    h, w = inst.shape
    if out is None:
        out = {"binary": np.empty((h, w), np.uint8), "hv": np.empty((2, h, w), np.float32),
               "type": np.empty((h, w), np.int64)}
    hv = _hv_out(out["hv"], h, w, (np.float32, np.float16))
    for key in ("binary", "type"):
        if out[key].shape != (h, w):
            raise ValueError(f"out[{key!r}] must have shape {(h, w)}, got {out[key].shape}")
    lut = class_lut(inst, classes, type_order, unknown_index).astype(out["type"].dtype)
    dense, n = _dense_ids(inst)
    if dense is not inst:
        lut = np.concatenate([lut[:1], lut[np.unique(inst[inst > 0])]])
    half = hv.dtype == np.float16
    _fill(dense, *_words(dense), n, lut, half_table(max(h, w)) if half else _NO_TABLE, out["binary"],
          hv.view(np.uint16) if half else hv, out["type"], True)
    return dict(out)
