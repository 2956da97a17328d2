"""Label evaluation against ground truth: macro F1 and accuracy over the four scored classes,
confusion matrices, and the paper's Table 3 as Markdown.

How Unknown counts: cells whose *ground truth* is Unknown (unlabelled, hybrids, low quality)
are left out, as the paper's evaluation keeps only the four classes. A *prediction* of Unknown
for a scored cell is a miss: it lowers accuracy and the recall of the true class (it is a
column of the confusion matrix but not a class of the macro average). Since Unknown cells are
also left out of the type loss, ``labelled_macro_f1`` scores only the cells a method labels:
precision against coverage (``predicted_unknown``).

The macro average runs over the scored classes present in the truth or in the prediction (as
scikit-learn's default): on a slide of immune cells only, a method that calls them all
Inflammatory scores 1, and one that calls some Connective is penalised for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score

from stx_platform.taxonomy import LABEL_CLASSES, SCORED_CLASSES, UNKNOWN


def score(truth: pd.Series, pred: pd.Series) -> dict:
    """Scores of ``pred`` against ``truth`` (both class names indexed by cell id; cells missing
    from ``pred`` count as Unknown)."""
    pred = pred.reindex(truth.index).fillna(UNKNOWN).astype(str)
    keep = truth.isin(SCORED_CLASSES).to_numpy()
    t, p = truth.to_numpy()[keep].astype(str), pred.to_numpy()[keep]
    if len(t) == 0:
        raise ValueError("no ground-truth cell of a scored class")
    f1 = f1_score(t, p, labels=list(SCORED_CLASSES), average=None, zero_division=0)
    cm = confusion_matrix(t, p, labels=list(LABEL_CLASSES))[:len(SCORED_CLASSES)]
    return {"macro_f1": _macro(t, p, f1), "accuracy": float(np.mean(t == p)), "n_cells": int(len(t)),
            "predicted_unknown": float(np.mean(p == UNKNOWN)), "labelled_macro_f1": _labelled_macro_f1(t, p),
            "f1": dict(zip(SCORED_CLASSES, map(float, f1))),
            "confusion": pd.DataFrame(cm, index=list(SCORED_CLASSES), columns=list(LABEL_CLASSES))}


def _macro(t: np.ndarray, p: np.ndarray, f1: np.ndarray) -> float:
    present = [i for i, c in enumerate(SCORED_CLASSES) if np.any(t == c) or np.any(p == c)]
    return float(np.mean(f1[present]))


def _labelled_macro_f1(t: np.ndarray, p: np.ndarray) -> float:
    """Macro F1 over the cells predicted as a scored class (NaN when there is none)."""
    lab = p != UNKNOWN
    if not lab.any():
        return float("nan")
    f1 = f1_score(t[lab], p[lab], labels=list(SCORED_CLASSES), average=None, zero_division=0)
    return _macro(t[lab], p[lab], f1)


def table3(results: dict[str, dict], order: list[str] | None = None) -> str:
    """Markdown in the form of the paper's Table 3: Model | Macro F1 | Acc (+ per-class F1, the share
    predicted Unknown and the macro F1 on the cells a method labels)."""
    order = order or list(results)
    lines = ["| Model | Macro F1 | Acc | " + " | ".join(f"F1 {c}" for c in SCORED_CLASSES)
             + " | pred. Unknown | Macro F1 on labelled |",
             "|---|---|---|" + "---|" * len(SCORED_CLASSES) + "---|---|"]
    for m in order:
        r = results[m]
        lines.append(f"| {m} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | "
                     + " | ".join(f"{r['f1'][c]:.3f}" for c in SCORED_CLASSES)
                     + f" | {r['predicted_unknown']:.1%} | {r.get('labelled_macro_f1', float('nan')):.4f} |")
    return "\n".join(lines)


def confusion_figure(results: dict[str, dict], order: list[str] | None = None):
    """One row-normalised confusion matrix per method, side by side (matplotlib Figure).

    ``results[m]``: ``confusion`` (DataFrame, rows ground truth, columns predicted), ``macro_f1``,
    ``accuracy``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = order or list(results)
    fig, axes = plt.subplots(1, len(order), figsize=(3.3 * len(order), 3.6), squeeze=False)
    for ax, m in zip(axes[0], order):
        df = results[m]["confusion"]
        cm = df.to_numpy().astype(float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(df.shape[1]), [str(c)[:5] for c in df.columns], fontsize=7, rotation=45)
        ax.set_yticks(range(df.shape[0]), [str(c)[:5] for c in df.index], fontsize=7)
        ax.set_title(f"{m}\nF1 {results[m]['macro_f1']:.3f}  acc {results[m]['accuracy']:.3f}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("ground truth", fontsize=7)
    fig.tight_layout()
    return fig
