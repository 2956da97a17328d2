"""Nuclei segmentation, detection and classification metrics (PanNuke / HoVer-Net / CellViT).

Conventions:

* instance maps (H, W) int, 0 = background; classes are type indices
  (:data:`~stx_platform.taxonomy.PANNUKE_TYPE_ORDER`: 0 background, 1..5 nuclei classes) given
  per instance as in :func:`stx_platform.targets.class_lut` (mapping id -> class, or an array
  indexed by id; names allowed), or as an (H, W) class map (each nucleus takes the majority
  class of its pixels). Unknown nuclei (negative class) are never scored as any class.
* PQ: pairs with IoU > 0.5 (necessarily unique); DQ = TP / (TP + FP/2 + FN/2); SQ = mean IoU of
  the pairs; PQ = DQ * SQ. With no true and no predicted nucleus all three are NaN; with
  nothing matched they are 0.
* bPQ of an image: PQ of the binarised (all classes) instance maps, NaN when the truth has no
  nucleus (even if something was predicted). Per-class PQ: NaN when the truth lacks the class
  in that image; mPQ of an image = nanmean over classes. Reported bPQ / mPQ = mean over tissues
  of the per-tissue nanmean over images (PanNuke protocol).
* Detection: centroids (x, y) paired as HoVer-Net and CellViT pair them (``pairing="hovernet"``,
  the default): one Hungarian assignment over all distances, then pairs farther than ``radius``
  (12 px at 40x, 6 at 20x; a distance equal to the radius pairs) are dropped. Published
  figures use it. ``pairing="gated"`` never assigns a pair beyond the radius, so it finds the
  most pairs within it (then the least total distance), so its F1 is higher. Counts are
  pooled over all nuclei of all images. Per-class F1, precision and recall (HoVer-Net /
  CellViT): 2 tp / (2 tp + 2 fp + 2 fn + fp_unpaired + fn_unpaired), tp / (tp + 2 fp +
  fp_unpaired), tp / (tp + 2 fn + fn_unpaired). True nuclei whose class is not scored (PanNuke's
  Dead, Unknown) are unlabelled, as in HoVer-Net's non-exhaustive mode: they count for
  detection, and a prediction paired with one is neither right nor wrong about its type.
* Dice / Jaccard of the foreground masks per image (NaN when both are empty), averaged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from stx_platform.targets import _compact, class_lut

__all__ = ["PAIRINGS", "PQ", "Matches", "binary_pq", "centroids", "classification_scores", "detection_scores", "dice",
           "instance_classes", "jaccard", "match_centroids", "multiclass_pq", "pannuke_scores", "pq",
           "remap_label"]


# --------------------------------------------------------------------------- helpers

def remap_label(inst: np.ndarray) -> np.ndarray:
    """Instance ids made consecutive (1..n) keeping their order; 0 stays background."""
    inst = np.asarray(inst)
    flat = inst.ravel()
    fg = np.flatnonzero(flat)
    out = np.zeros(inst.shape, np.int32)
    if fg.size:
        _, k = _compact(flat[fg].astype(np.int64))
        out.ravel()[fg] = k + 1
    return out


def instance_classes(inst: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """(ids, class of each id) for the nuclei present in ``inst``; ``classes`` is a mapping /
    id-indexed array (see :func:`stx_platform.targets.class_lut`) or an (H, W) class map."""
    inst = np.asarray(inst)
    flat = inst.ravel()
    fg = np.flatnonzero(flat)
    ids, k = _compact(flat[fg].astype(np.int64))
    if isinstance(classes, np.ndarray) and classes.ndim == 2:
        if classes.shape != inst.shape:
            raise ValueError(f"class map {classes.shape} and instance map {inst.shape} differ in shape")
        cm = classes.ravel()[fg].astype(np.int64)
        shift = max(0, -int(cm.min())) if cm.size else 0   # negative (Unknown) values counted too
        c = int(cm.max()) + shift + 1 if cm.size else 1
        counts = np.bincount(k * c + cm + shift, minlength=ids.size * c).reshape(ids.size, c)
        return ids, (np.argmax(counts, 1) - shift).astype(np.int64)
    lut = class_lut(inst, classes)
    return ids, lut[ids]


def centroids(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (n, 2) centroids as (x, y) = mean column, mean row)."""
    inst = np.asarray(inst)
    flat = inst.ravel()
    fg = np.flatnonzero(flat)
    ids, k = _compact(flat[fg].astype(np.int64))
    rows, cols = np.divmod(fg, inst.shape[1])
    area = np.bincount(k, minlength=ids.size)
    xy = np.stack([np.bincount(k, weights=cols, minlength=ids.size),
                   np.bincount(k, weights=rows, minlength=ids.size)], 1) / np.maximum(area, 1)[:, None]
    return ids, xy


@dataclass
class _Overlap:
    true_ids: np.ndarray     # (nt,)
    pred_ids: np.ndarray     # (np,)
    pair_t: np.ndarray       # index into true_ids of each overlapping pair
    pair_p: np.ndarray       # index into pred_ids
    iou: np.ndarray          # IoU of each overlapping pair


def _overlap(true_inst: np.ndarray, pred_inst: np.ndarray) -> _Overlap:
    t = np.asarray(true_inst).ravel()
    p = np.asarray(pred_inst).ravel()
    if t.shape != p.shape:
        raise ValueError(f"true and predicted maps differ in shape: {np.shape(true_inst)} vs {np.shape(pred_inst)}")
    ft, fp = np.flatnonzero(t), np.flatnonzero(p)
    tid, tk = _compact(t[ft].astype(np.int64))
    pid, pk = _compact(p[fp].astype(np.int64))
    t_area = np.bincount(tk, minlength=tid.size)
    p_area = np.bincount(pk, minlength=pid.size)
    ti = np.full(t.size, -1, np.int64)
    ti[ft] = tk
    pi = np.full(p.size, -1, np.int64)
    pi[fp] = pk
    both = (ti >= 0) & (pi >= 0)
    key = ti[both] * max(pid.size, 1) + pi[both]
    keys, inter = np.unique(key, return_counts=True)
    a, b = np.divmod(keys, max(pid.size, 1))
    iou = inter / (t_area[a] + p_area[b] - inter)
    return _Overlap(tid, pid, a, b, iou)


@dataclass
class Matches:
    """IoU > 0.5 pairs of a PQ computation (ids as in the input maps)."""
    true_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray

    @property
    def tp(self) -> int:
        return int(self.iou.size)

    @property
    def fp(self) -> int:
        return int(self.unpaired_pred.size)

    @property
    def fn(self) -> int:
        return int(self.unpaired_true.size)


class PQ(NamedTuple):
    dq: float
    sq: float
    pq: float
    matches: Matches


def _pq_numbers(tp: int, fp: int, fn: int, iou_sum: float) -> tuple[float, float, float]:
    if tp + fp + fn == 0:
        return np.nan, np.nan, np.nan
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return dq, sq, dq * sq


def pq(true_inst: np.ndarray, pred_inst: np.ndarray, iou_threshold: float = 0.5) -> PQ:
    """DQ, SQ, PQ of one image and the matched pairs (IoU > ``iou_threshold``, 0.5 or more)."""
    if iou_threshold < 0.5:
        raise ValueError("IoU threshold below 0.5 needs an assignment step; not supported")
    ov = _overlap(true_inst, pred_inst)
    m = ov.iou > iou_threshold
    t_m, p_m, iou = ov.pair_t[m], ov.pair_p[m], ov.iou[m]
    un_t = np.setdiff1d(np.arange(ov.true_ids.size), t_m)
    un_p = np.setdiff1d(np.arange(ov.pred_ids.size), p_m)
    matches = Matches(ov.true_ids[t_m], ov.pred_ids[p_m], iou, ov.true_ids[un_t], ov.pred_ids[un_p])
    dq, sq, pq_ = _pq_numbers(matches.tp, matches.fp, matches.fn, float(iou.sum()))
    return PQ(dq, sq, pq_, matches)


def binary_pq(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """PQ of the binarised maps (every nucleus, any class); NaN when the truth has no nucleus."""
    if not np.any(true_inst):
        return np.nan
    return pq(true_inst, pred_inst).pq


def multiclass_pq(true_inst: np.ndarray, true_classes, pred_inst: np.ndarray, pred_classes,
                  n_classes: int = 6) -> tuple[np.ndarray, float]:
    """Per-class PQ of one image for classes 1..n_classes-1 (``n_classes`` counts background) and
    mPQ = their nanmean. A class absent from the truth is NaN (even if predicted)."""
    ov = _overlap(true_inst, pred_inst)
    _, tc = instance_classes(true_inst, true_classes)
    _, pc = instance_classes(pred_inst, pred_classes)
    out = np.full(n_classes - 1, np.nan)
    good = ov.iou > 0.5
    pt, pp, piou = ov.pair_t[good], ov.pair_p[good], ov.iou[good]
    for c in range(1, n_classes):
        n_true = int((tc == c).sum())
        if n_true == 0:
            continue
        same = (tc[pt] == c) & (pc[pp] == c)
        tp = int(same.sum())
        fp = int((pc == c).sum()) - tp
        fn = n_true - tp
        out[c - 1] = _pq_numbers(tp, fp, fn, float(piou[same].sum()))[2]
    mpq = float(np.nanmean(out)) if np.any(~np.isnan(out)) else np.nan
    return out, mpq


def _fg_counts(true_inst, pred_inst) -> tuple[int, int, int]:
    t = np.asarray(true_inst) > 0
    p = np.asarray(pred_inst) > 0
    return int((t & p).sum()), int(t.sum()), int(p.sum())


def dice(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Dice of the foreground masks; NaN when both are empty."""
    inter, a, b = _fg_counts(true_inst, pred_inst)
    return 2 * inter / (a + b) if a + b else np.nan


def jaccard(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Jaccard (IoU) of the foreground masks; NaN when both are empty."""
    inter, a, b = _fg_counts(true_inst, pred_inst)
    return inter / (a + b - inter) if a + b else np.nan


# --------------------------------------------------------------------------- detection

PAIRINGS = ("hovernet", "gated")


def match_centroids(true_xy: np.ndarray, pred_xy: np.ndarray, radius: float = 12,
                    pairing: str = "hovernet") -> tuple[np.ndarray, np.ndarray]:
    """Hungarian pairing of two point sets, pairs within ``radius`` (inclusive): (true idx, pred idx).
    ``pairing``: ``"hovernet"`` (assign over all distances, then drop pairs beyond the radius) or
    ``"gated"`` (assign within the radius only: the most pairs, then the least distance)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, not {pairing!r}")
    true_xy = np.asarray(true_xy, np.float64).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    d = np.sqrt(((true_xy[:, None, :] - pred_xy[None, :, :]) ** 2).sum(-1))
    if pairing == "hovernet":
        r, c = linear_sum_assignment(d)
        keep = d[r, c] <= radius
        return r[keep].astype(np.intp), c[keep].astype(np.intp)
    ok = d <= radius
    rows = np.flatnonzero(ok.any(1))
    cols = np.flatnonzero(ok.any(0))
    if rows.size == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    sub = d[np.ix_(rows, cols)]
    # any gated pair costs more than all admissible pairs together: maximum matches, then minimum distance
    big = radius * (min(rows.size, cols.size) + 1) + 1.0
    cost = np.where(sub <= radius, sub, big)
    r, c = linear_sum_assignment(cost)
    keep = sub[r, c] <= radius
    return rows[r[keep]], cols[c[keep]]


def _class_scores(pt: np.ndarray, pp: np.ndarray, un_t: np.ndarray, un_p: np.ndarray, c: int,
                  scored: Sequence[int]) -> tuple[float, float, float]:
    """(F1, precision, recall) of class ``c`` as HoVer-Net / CellViT weigh them; a pair whose true
    class is not ``scored`` is unlabelled (non-exhaustive): never a false positive of ``c``."""
    labelled = np.isin(pt, scored)
    tp = int(((pt == c) & (pp == c)).sum())
    fp = int(((pp == c) & (pt != c) & labelled).sum())
    fn = int(((pt == c) & (pp != c)).sum())
    fp_d = int((un_p == c).sum())
    fn_d = int((un_t == c).sum())
    den = 2 * tp + 2 * fp + 2 * fn + fp_d + fn_d
    ratio = lambda num, d: num / d if d else np.nan
    return ratio(2 * tp, den), ratio(tp, tp + 2 * fp + fp_d), ratio(tp, tp + 2 * fn + fn_d)


def classification_scores(true_cls: np.ndarray, pred_cls: np.ndarray, classes: Sequence[int]) -> dict:
    """Nucleus-level classification over paired nuclei whose true class is scored: accuracy and
    macro F1 over ``classes`` (classes with no true and no predicted sample are left out)."""
    true_cls, pred_cls = np.asarray(true_cls), np.asarray(pred_cls)
    sel = np.isin(true_cls, classes)
    t, p = true_cls[sel], pred_cls[sel]
    f1 = {}
    for c in classes:
        tp = int(((t == c) & (p == c)).sum())
        fp = int(((t != c) & (p == c)).sum())
        fn = int(((t == c) & (p != c)).sum())
        f1[int(c)] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan
    vals = [v for v in f1.values() if not np.isnan(v)]
    return {"accuracy": float((t == p).mean()) if t.size else np.nan,
            "macro_f1": float(np.mean(vals)) if vals else np.nan, "f1": f1, "n": int(t.size)}


def detection_scores(true: Iterable[tuple[np.ndarray, np.ndarray]], pred: Iterable[tuple[np.ndarray, np.ndarray]],
                     radius: float = 12, classes: Sequence[int] | None = None, pairing: str = "hovernet") -> dict:
    """Pooled detection and per-class detection scores.

    ``true`` / ``pred``: one ``(centroids (n, 2) as (x, y), classes (n,))`` per image (classes may
    be None for detection only). ``classes``: the class indices scored (default: every class
    >= 1 that occurs). Returns ``f1``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn``,
    ``f1_per_class``, ``precision_per_class`` and ``recall_per_class`` {class: value},
    ``classification`` (see :func:`classification_scores`), ``paired_classes`` (true, predicted
    class of every matched pair) and ``pairing``.
    """
    pt, pp, un_t, un_p = [], [], [], []
    tp = fp = fn = 0
    for (txy, tcl), (pxy, pcl) in zip(true, pred, strict=True):
        txy = np.asarray(txy, np.float64).reshape(-1, 2)
        pxy = np.asarray(pxy, np.float64).reshape(-1, 2)
        tcl = np.full(len(txy), -1) if tcl is None else np.asarray(tcl).astype(np.int64)
        pcl = np.full(len(pxy), -1) if pcl is None else np.asarray(pcl).astype(np.int64)
        ti, pi = match_centroids(txy, pxy, radius, pairing)
        tp += ti.size
        fn += len(txy) - ti.size
        fp += len(pxy) - pi.size
        pt.append(tcl[ti])
        pp.append(pcl[pi])
        un_t.append(np.delete(tcl, ti))
        un_p.append(np.delete(pcl, pi))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)
    pt, pp, un_t, un_p = cat(pt), cat(pp), cat(un_t), cat(un_p)
    if classes is None:
        allc = np.concatenate([pt, pp, un_t, un_p])
        classes = sorted(int(c) for c in np.unique(allc[allc >= 1]))
    out = {"tp": tp, "fp": fp, "fn": fn,
           "precision": tp / (tp + fp) if tp + fp else np.nan,
           "recall": tp / (tp + fn) if tp + fn else np.nan,
           "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan,
           "classification": classification_scores(pt, pp, classes),
           "paired_classes": (pt, pp), "pairing": pairing}
    per = {int(c): _class_scores(pt, pp, un_t, un_p, int(c), classes) for c in classes}
    for i, key in enumerate(("f1_per_class", "precision_per_class", "recall_per_class")):
        out[key] = {c: v[i] for c, v in per.items()}
    return out


# --------------------------------------------------------------------------- PanNuke protocol

def _tissue_mean(values: np.ndarray, tissues: np.ndarray) -> tuple[float, dict[str, float]]:
    per = {}
    for t in dict.fromkeys(tissues.tolist()):
        v = values[tissues == t]
        per[t] = float(np.nanmean(v)) if np.any(~np.isnan(v)) else np.nan
    vals = [v for v in per.values() if not np.isnan(v)]
    return (float(np.mean(vals)) if vals else np.nan), per


def pannuke_scores(true_insts: Sequence[np.ndarray], true_classes: Sequence, pred_insts: Sequence[np.ndarray],
                   pred_classes: Sequence, tissues: Sequence[str], n_classes: int = 6, radius: float = 12,
                   classes: Sequence[int] | None = None, pairing: str = "hovernet") -> dict:
    """PanNuke-protocol scores of a set of images.

    Per image: true / predicted instance maps and their classes (see :func:`instance_classes`)
    and the tissue name. Returns ``bPQ`` and ``mPQ`` (mean over tissues of the per-tissue mean
    over images), ``PQ_per_class`` {class: tissue-averaged PQ}, ``per_tissue`` {tissue: {bPQ, mPQ,
    images}}, ``dice`` and ``jaccard`` (mean over images), and the pooled ``detection`` scores
    (centroid pairing by ``pairing``, per-class F1 / precision / recall, nucleus classification)
    over ``classes`` (default 1..n_classes-1).
    """
    n = len(true_insts)
    if not (len(true_classes) == len(pred_insts) == len(pred_classes) == len(tissues) == n):
        raise ValueError("true_insts, true_classes, pred_insts, pred_classes and tissues must have the same length")
    classes = list(range(1, n_classes)) if classes is None else list(classes)
    tissues = np.asarray([str(t) for t in tissues])
    bpq = np.full(n, np.nan)
    mpq = np.full(n, np.nan)
    cpq = np.full((n, n_classes - 1), np.nan)
    dices, jacs = np.full(n, np.nan), np.full(n, np.nan)
    det_true, det_pred = [], []
    for i in range(n):
        t, p = np.asarray(true_insts[i]), np.asarray(pred_insts[i])
        bpq[i] = binary_pq(t, p)
        cpq[i], _ = multiclass_pq(t, true_classes[i], p, pred_classes[i], n_classes)
        scored = cpq[i][[c - 1 for c in classes]]
        mpq[i] = np.nanmean(scored) if np.any(~np.isnan(scored)) else np.nan
        dices[i], jacs[i] = dice(t, p), jaccard(t, p)
        _, txy = centroids(t)
        _, pxy = centroids(p)
        det_true.append((txy, instance_classes(t, true_classes[i])[1]))
        det_pred.append((pxy, instance_classes(p, pred_classes[i])[1]))
    b, b_per = _tissue_mean(bpq, tissues)
    m, m_per = _tissue_mean(mpq, tissues)
    per_class = {c: _tissue_mean(cpq[:, c - 1], tissues)[0] for c in classes}
    nanmean = lambda v: float(np.nanmean(v)) if np.any(~np.isnan(v)) else np.nan
    return {"bPQ": b, "mPQ": m, "PQ_per_class": per_class,
            "per_tissue": {t: {"bPQ": b_per[t], "mPQ": m_per[t], "images": int((tissues == t).sum())} for t in b_per},
            "dice": nanmean(dices), "jaccard": nanmean(jacs),
            "detection": detection_scores(det_true, det_pred, radius, classes, pairing),
            "images": n, "bPQ_per_image": bpq, "mPQ_per_image": mpq}
