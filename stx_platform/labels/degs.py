"""One-vs-rest Wilcoxon rank-sum scores per cluster and gene (as ``sc.tl.rank_genes_groups``
with ``method="wilcoxon"``, no tie correction), computed from the sparse matrix directly.

Zeros are the bulk of a Xenium matrix and all tie at one average rank, so only the non-zero
entries are sorted (once, all genes together), and each cluster's rank sum is the sum over its
non-zero entries plus its zeros times the shared zero rank.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp


def wilcoxon_scores(X: sp.spmatrix, clusters: np.ndarray) -> np.ndarray:
    """z-scores (clusters x genes): (R_k - n_k (N+1)/2) / sqrt(n_k (N - n_k) (N+1) / 12), R_k the
    rank sum of cluster k's cells in the gene's ranking over all N cells (average ranks on ties)."""
    X = sp.csc_matrix(X)
    N, G = X.shape
    K = int(clusters.max()) + 1
    n_k = np.bincount(clusters, minlength=K).astype(np.float64)
    nnz_per_gene = np.diff(X.indptr)
    col = np.repeat(np.arange(G), nnz_per_gene)
    key = _sort_key(col, X.data)
    order = np.argsort(key, kind="stable")  # runs of sorted genes: the stable sort is the faster
    key_s = key[order]
    col_s = col  # CSC: already grouped by gene, and the key sorts by gene first
    zeros = (N - nnz_per_gene).astype(np.float64)
    # position of each sorted entry within its gene, 1-based, after the gene's zeros
    start = np.repeat(X.indptr[:-1], nnz_per_gene)
    rank = zeros[col_s] + (np.arange(len(order)) - start + 1)
    # average ranks over runs of equal (gene, value)
    new_run = np.ones(len(order), bool)
    new_run[1:] = key_s[1:] != key_s[:-1]
    run = np.cumsum(new_run) - 1
    rank = (np.bincount(run, weights=rank) / np.bincount(run))[run]
    cell_cluster = clusters[X.indices[order]]
    key = cell_cluster.astype(np.int64) * G + col_s
    R_nz = np.bincount(key, weights=rank, minlength=K * G).reshape(K, G)
    nnz_kg = np.bincount(key, minlength=K * G).reshape(K, G)
    R = R_nz + (n_k[:, None] - nnz_kg) * ((zeros + 1) / 2)[None, :]
    mean = n_k[:, None] * (N + 1) / 2
    std = np.sqrt(n_k * (N - n_k) * (N + 1) / 12)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (R - mean) / std
    return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _sort_key(col: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """One integer per entry that sorts as (gene, value), for a single argsort instead of a
    lexsort (~1.7x faster at 5M entries). float32 values: the gene in the high 32 bits, the value's bits mapped to
    an order-preserving uint32 in the low ones (equal values, -0.0 and 0.0 included, get equal
    keys). Other dtypes: the gene times the count of distinct values plus the value's dense rank."""
    vals = np.asarray(vals)
    if vals.dtype == np.float32:
        bits = vals.view(np.uint32)
        bits = np.where(vals == 0, np.uint32(1 << 31), np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)))
        return (col.astype(np.uint64) << np.uint64(32)) | bits.astype(np.uint64)
    uniq, dense = np.unique(vals.astype(np.float64), return_inverse=True)
    return col.astype(np.int64) * len(uniq) + dense.ravel()


def top_genes(scores: np.ndarray, genes: np.ndarray | list[str], n: int) -> list[list[str]]:
    """The ``n`` highest-scoring genes of each cluster, best first (stable on ties)."""
    genes = np.asarray(genes, dtype=object)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    return [list(genes[o]) for o in order]


class ClusterMoments(NamedTuple):
    """Per cluster: cell count ``n`` (K,), sums and sums of squares (K x G) of the log-normalised
    expression: enough for any contrast between groups of clusters without the matrix."""

    n: np.ndarray
    sums: np.ndarray
    sumsq: np.ndarray


def cluster_moments(X: sp.spmatrix, clusters: np.ndarray) -> ClusterMoments:
    K = int(clusters.max()) + 1
    onehot = sp.csr_matrix((np.ones(len(clusters)), (clusters, np.arange(len(clusters)))), shape=(K, len(clusters)))
    X = sp.csr_matrix(X, dtype=np.float64)
    return ClusterMoments(np.bincount(clusters, minlength=K).astype(np.float64),
                          np.asarray((onehot @ X).todense()), np.asarray((onehot @ X.multiply(X)).todense()))


def group_contrast(m: ClusterMoments, k: int, others: np.ndarray) -> np.ndarray:
    """Welch t per gene of cluster ``k`` against the cells of the clusters ``others`` pooled."""
    n1, n2 = m.n[k], m.n[others].sum()
    if n1 < 2 or n2 < 2:
        return np.zeros(m.sums.shape[1])
    mu1, mu2 = m.sums[k] / n1, m.sums[others].sum(0) / n2
    v1 = np.maximum(m.sumsq[k] / n1 - mu1 ** 2, 0) * n1 / (n1 - 1)
    v2 = np.maximum(m.sumsq[others].sum(0) / n2 - mu2 ** 2, 0) * n2 / (n2 - 1)
    se = np.sqrt(v1 / n1 + v2 / n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mu1 - mu2) / se
    return np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
