"""Validation of a CellViT model on a PanNuke-format fold (or a folder of annotated tiles): PanNuke
metrics, a confusion matrix of matched nuclei and an overlay picture (truth beside prediction,
nuclei outlined by class).

Pure torch/numpy: used by every training epoch (rank 0), by ``stx evaluate`` and by tuning.
Scored classes are those the labels can produce (:data:`SCORED_CLASSES`; PanNuke's Dead has no
label source, so it is left out of mPQ, macro F1 and accuracy unless ``classes`` says otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stx_platform import storage
from stx_platform.inference import instances, predict_maps
from stx_platform.metrics import (
    pannuke_scores,
)
from stx_platform.postprocess import instance_contours, instances_from_maps
from stx_platform.sources.pannuke import PanNukeFold
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER, SCORED_CLASSES
from stx_platform.viz import (
    caption,
    figure_png,
    hstack,
    legend,
    outline_contours,
    save_png,
    vstack,
)

#: type indices scored by default
SCORED: tuple[int, ...] = tuple(sorted(PANNUKE_TYPE_ORDER.index(c) for c in SCORED_CLASSES))


@dataclass
class Evaluation:
    """``scores``: :func:`stx_platform.metrics.pannuke_scores`; ``metrics``: the flat figures
    (:func:`flat_metrics`); ``confusion``: matched nuclei, true class (rows) x predicted class;
    ``overlay``: RGB picture of the first images (truth | prediction)."""

    scores: dict
    metrics: dict[str, float]
    confusion: pd.DataFrame
    overlay: np.ndarray | None

    def confusion_png(self, title: str = "validation") -> bytes:
        from stx_platform.labels.evaluate import confusion_figure

        return figure_png(confusion_figure({title: {"confusion": self.confusion,
                                                    "macro_f1": self.metrics["macro_f1"],
                                                    "accuracy": self.metrics["accuracy"]}}))

    def write(self, folder: str, title: str = "validation") -> dict[str, str]:
        """``metrics.json``, ``confusion.png`` and ``overlays.png`` into ``folder`` (URL); returns their URLs."""
        out = {"metrics": storage.join(folder, "metrics.json"), "confusion": storage.join(folder, "confusion.png")}
        storage.write_json(out["metrics"], json_safe(self.metrics))
        storage.write_bytes(out["confusion"], self.confusion_png(title))
        if self.overlay is not None:
            out["overlays"] = storage.join(folder, "overlays.png")
            save_png(out["overlays"], self.overlay)
        return out


def json_safe(d: dict) -> dict:
    """NaN/inf -> None, numpy scalars -> Python (strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in ((k, float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in d.items())}


def flat_metrics(scores: dict) -> dict[str, float]:
    """The headline figures of :func:`pannuke_scores` as one flat dict: mPQ, bPQ, dice, jaccard,
    f1, precision, recall, macro_f1, accuracy, then ``PQ_<class>``, ``f1_<class>``,
    ``precision_<class>`` and ``recall_<class>``."""
    det = scores["detection"]
    out = {"mPQ": scores["mPQ"], "bPQ": scores["bPQ"], "dice": scores["dice"], "jaccard": scores["jaccard"],
           "f1": det["f1"], "precision": det["precision"], "recall": det["recall"],
           "macro_f1": det["classification"]["macro_f1"], "accuracy": det["classification"]["accuracy"]}
    for c, v in scores["PQ_per_class"].items():
        out[f"PQ_{PANNUKE_TYPE_ORDER[c]}"] = v
    for key in ("f1", "precision", "recall"):
        for c, v in det[f"{key}_per_class"].items():
            out[f"{key}_{PANNUKE_TYPE_ORDER[c]}"] = v
    return {k: float(v) for k, v in out.items()}


def confusion(scores: dict, rows: Sequence[int] = SCORED) -> pd.DataFrame:
    """Counts of the centroid-matched nuclei of :func:`pannuke_scores` by true class (``rows``)
    and predicted class (every nucleus class)."""
    cols = list(range(1, len(PANNUKE_TYPE_ORDER)))
    true, pred = scores["detection"]["paired_classes"]
    cm = np.zeros((len(rows), len(cols)), np.int64)
    for i, r in enumerate(rows):
        sel = pred[true == r]
        cm[i] = [(sel == c).sum() for c in cols]
    return pd.DataFrame(cm, index=[PANNUKE_TYPE_ORDER[r] for r in rows], columns=[PANNUKE_TYPE_ORDER[c] for c in cols])


def class_index(name: str) -> int:
    """PanNuke type index of a class name; -1 (unlabelled: never scored as a type) otherwise."""
    return PANNUKE_TYPE_ORDER.index(name) if name in PANNUKE_TYPE_ORDER[1:] else -1


def _class_name(i: int) -> str:
    return PANNUKE_TYPE_ORDER[i] if 0 <= i < len(PANNUKE_TYPE_ORDER) else "Unknown"


def overlay_panel(image: np.ndarray, true_inst, true_classes: dict, pred_inst, pred_classes: dict,
                  scale: int = 2) -> np.ndarray:
    """One row: the image with true nuclei outlined (left) and predicted ones (right), by class."""
    import cv2

    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    panels = []
    for inst, cls, name in ((true_inst, true_classes, "truth"), (pred_inst, pred_classes, "prediction")):
        polys = instance_contours(inst)
        names = [_class_name(int(cls.get(i, 0))) for i in polys]
        panels.append(caption(outline_contours(big, polys.values(), names, (0.0, 0.0), scale),
                              f"{name}: {len(polys)} nuclei", 16))
    return hstack(panels)


def _predict_items(model: torch.nn.Module, items: list, batch_size: int, amp: bool) -> list[tuple]:
    """(instance map, {id: class}, type probabilities (C, H, W)) per item; images of different
    sizes are predicted one by one."""
    shapes = {it.image.shape for it in items}
    groups = [items] if len(shapes) == 1 else [[it] for it in items]
    out = []
    for g in groups:
        maps = predict_maps(model, np.stack([it.image for it in g]), batch_size, amp)
        for j in range(len(g)):
            inst, table = instances(maps, j)
            out.append((inst, dict(zip(table["id"].tolist(), table["class"].tolist())), maps.type[j]))
    return out


def round_trip(fold, limit: int | None = None) -> dict[str, float]:
    """The post-processing on perfect targets: each image's true instance map -> binary and HV
    maps -> HoVer-Net post-processing -> instances, scored against the truth (bPQ, Dice, detection
    F1). What a model that predicts its targets exactly would score: the ceiling the
    post-processing leaves."""
    from stx_platform.targets import binary_map, hv_map

    n = len(fold) if limit is None else min(limit, len(fold))
    ti, pi, ts = [], [], []
    for i in range(n):
        it = fold[i]
        inst, _ = instances_from_maps(binary_map(it.instances).astype(np.float32), hv_map(it.instances))
        ti.append(it.instances)
        pi.append(inst)
        ts.append(it.tissue)
    unlabelled = lambda inst: {int(k): -1 for k in np.unique(inst[inst > 0])}
    s = pannuke_scores(ti, [unlabelled(t) for t in ti], pi, [unlabelled(p) for p in pi], ts)
    return {"bPQ": s["bPQ"], "dice": s["dice"], "f1": s["detection"]["f1"],
            "precision": s["detection"]["precision"], "recall": s["detection"]["recall"]}


def evaluate(model: torch.nn.Module, fold, limit: int | None = None, batch_size: int = 8,
             amp: bool = True, overlays: int = 6, classes: Sequence[int] = SCORED, radius: float = 12,
             progress: Callable[[int, int], None] | None = None, pairing: str = "hovernet",
             on_item: Callable[[int, object, np.ndarray], None] | None = None) -> Evaluation:
    """Predict, post-process and score the first ``limit`` images (all when None) of a PanNuke fold
    (a URL or :class:`PanNukeFold`) or of any sequence of items shaped alike (e.g.
    :class:`~stx_platform.sources.tiles.TileFolder`). ``on_item(index, item, type probabilities)``
    sees each image's per-pixel class probabilities (C, H, W) as it is predicted."""
    fold = PanNukeFold(fold) if isinstance(fold, str) else fold
    n = len(fold) if limit is None else min(limit, len(fold))
    if n == 0:
        raise ValueError(f"{fold.url}: the validation fold has no images")
    true_insts, true_cls, pred_insts, pred_cls, tissues, rows = [], [], [], [], [], []
    for s in range(0, n, batch_size):
        items = [fold[i] for i in range(s, min(n, s + batch_size))]
        for i, (it, (inst, pc, type_prob)) in enumerate(zip(items, _predict_items(model, items, batch_size, amp)), s):
            if on_item:
                on_item(i, it, type_prob)
            tc = {k: class_index(v) for k, v in it.classes.items()}
            true_insts.append(it.instances)
            true_cls.append(tc)
            pred_insts.append(inst)
            pred_cls.append(pc)
            tissues.append(it.tissue)
            if len(rows) < overlays:
                rows.append(overlay_panel(it.image, it.instances, tc, inst, pc))
        if progress:
            progress(min(n, s + batch_size), n)
    scores = pannuke_scores(true_insts, true_cls, pred_insts, pred_cls, tissues, radius=radius, classes=classes,
                            pairing=pairing)
    cm = confusion(scores, classes)
    picture = None
    if rows:
        shown = [c for c in PANNUKE_TYPE_ORDER[1:] if c in set(cm.index) | {"Dead"}]
        if any(-1 in tc.values() for tc in true_cls[:overlays]):
            shown.append("Unknown")
        picture = hstack([vstack(rows), legend(shown)])
    return Evaluation(scores, flat_metrics(scores), cm, picture)
