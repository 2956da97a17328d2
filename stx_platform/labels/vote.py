"""Marker-gene voting per cluster and the neoplastic refinement (paper Sec. 4.1).

For cluster k with top-N DEGs g_1..g_N, s^k = sum_l w_l v(g_l), with w_l = N - l (rank
weighting, l = 1..N) or 1, and v(g) the gene's class-vote vector from the marker database
(each gene's vote is split across classes by its database entries, so it sums to 1 or 0).
Votes come from the slide organ's entries first; when their total is below tau_vote they come
from the whole, organ-agnostic database; still below, the cluster is Unknown. An Epithelial
cluster whose top-M DEGs overlap the cancer gene set by more than tau_cancer is Neoplastic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stx_platform.labels.config import LabelConfig
from stx_platform.taxonomy import EPITHELIAL, NEOPLASTIC, UNKNOWN, VOTE_CLASSES

#: Per-cluster evidence columns, in this order (the label table repeats them per cell).
VOTE_COLUMNS = ("votes_epithelial", "votes_inflammatory", "votes_connective", "votes_unknown")


def rank_weights(n: int, rank_weighting: bool) -> np.ndarray:
    """w_l = N - l for l = 1..N (the paper's formula: the N-th gene gets 0), or all ones."""
    return np.arange(n - 1, -1, -1, dtype=np.float64) if rank_weighting else np.ones(n)


def classify_clusters(top: list[list[str]], organ: str | None, db, config: LabelConfig) -> pd.DataFrame:
    """One row per cluster: class, votes per class, total, whether the fallback was used, the
    cancer-overlap ratio of its top-M genes, and its top-N genes. ``top`` holds each cluster's
    genes best first (at least max(N, M) of them)."""
    rows = []
    for k, genes in enumerate(top):
        top_n = list(genes[:config.top_n])
        w = rank_weights(len(top_n), config.rank_weighting)
        fallback = False
        s = w @ db.votes(top_n, organ) if organ else np.zeros(len(VOTE_CLASSES))
        if s.sum() < config.tau_vote:
            fallback = organ is not None
            s = w @ db.votes(top_n, None)
        if s.sum() < config.tau_vote:
            cls = UNKNOWN
        else:
            cls = VOTE_CLASSES[int(np.argmax(s))]
        overlap = float(db.cancer_overlap(list(genes[:config.top_m])))
        if config.hierarchy and cls == EPITHELIAL and overlap > config.tau_cancer:
            cls = NEOPLASTIC
        rows.append({"cluster": k, "label": cls, **dict(zip(VOTE_COLUMNS, s.astype(float))),
                     "votes_total": float(s.sum()), "fallback": fallback, "cancer_overlap": overlap,
                     "top_genes": ",".join(top_n)})
    return pd.DataFrame(rows)
