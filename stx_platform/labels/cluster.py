"""Transcriptomic clustering as the paper does it (Sec. 4.1): normalise, log1p, PCA, kNN graph,
Leiden. Pure functions on arrays; the same steps as scanpy's recipe, done without its copies:

- PCA from the gene x gene covariance (genes are few, ~300-500 on a Xenium panel), summed over
  dense blocks of cells, so no dense cells x genes matrix is ever whole;
- kNN by NN-descent from a random-projection forest, the algorithm and settings of pynndescent
  (what scanpy uses) in kernels a fresh process loads from numba's cache (labels/nndescent.py);
  connectivities by UMAP's fuzzy simplicial set (scanpy's default), computed vectorised in numpy;
- Leiden by igraph's C implementation (scanpy's ``flavor="igraph"``), modularity objective.
"""

from __future__ import annotations

import igraph as ig
import numpy as np
import scipy.sparse as sp


def normalise_log1p(counts: sp.spmatrix, target_sum: float | None = None) -> sp.csr_matrix:
    """Counts scaled to ``target_sum`` per cell (default: the median library size of cells with
    counts, as ``sc.pp.normalize_total``), then log1p; float32 CSR."""
    X = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    lib = np.asarray(X.sum(1)).ravel()
    if target_sum is None:
        pos = lib[lib > 0]
        target_sum = float(np.median(pos)) if len(pos) else 1.0
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0).astype(np.float32)
    X.data *= np.repeat(scale, np.diff(X.indptr))
    np.log1p(X.data, out=X.data)
    return X


def pca(X: sp.csr_matrix, n_pcs: int = 50, block: int = 16384) -> np.ndarray:
    """Scores on the top ``n_pcs`` principal components of the centred matrix (cells x n_pcs).

    Eigen-decomposition of the covariance, summed in float64 over blocks of ``block`` cells, each
    made dense and centred in float32 and multiplied by BLAS's ``syrk`` (a Xenium panel has a few
    hundred genes, so a block is small and no cells x genes dense matrix is ever whole). Each
    component's sign is fixed so that its largest loading is positive (deterministic output).
    """
    from scipy.linalg.blas import ssyrk

    n, g = X.shape
    k = int(min(n_pcs, g - 1, n - 1))
    mu = np.asarray(X.mean(0), np.float64).ravel()
    mu32 = mu.astype(np.float32)
    upper = np.zeros((g, g))
    for lo in range(0, n, block):
        rows = X[lo:lo + block]
        dense = (rows.toarray() if sp.issparse(rows) else np.asarray(rows)).astype(np.float32, copy=False) - mu32
        upper += ssyrk(1.0, dense, trans=1)   # upper triangle of dense.T @ dense
    cov = (np.triu(upper) + np.triu(upper, 1).T) / n
    vals, vecs = np.linalg.eigh(cov)
    vecs = vecs[:, ::-1][:, :k]
    sign = np.sign(vecs[np.abs(vecs).argmax(0), np.arange(k)])
    vecs = (vecs * np.where(sign == 0, 1, sign)).astype(np.float32)
    return np.asarray(X @ vecs, np.float32) - (mu32 @ vecs)[None, :]


#: Below this many cells the kNN search is exact (brute force), as ``sc.pp.neighbors`` does.
EXACT_KNN_BELOW = 8192


def knn(pcs: np.ndarray, k: int = 15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours, self first, euclidean: (indices, distances), n x k. Exact below
    ``EXACT_KNN_BELOW`` cells (:func:`exact_knn`), else NN-descent with the settings UMAP gives
    pynndescent when scanpy calls it (labels/nndescent.py)."""
    n = len(pcs)
    k = min(k, n)
    if n < EXACT_KNN_BELOW:
        return exact_knn(pcs, k)
    from stx_platform.labels.nndescent import neighbor_graph, scanpy_settings

    idx, dist = neighbor_graph(pcs, k + 1, seed, **scanpy_settings(n))
    return idx[:, :k], dist[:, :k]


def exact_knn(pcs: np.ndarray, k: int, block: int = 1024, spare: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours, self first, then by distance and, for equal distances, by
    index: ties never depend on the BLAS kernel's rounding.

    Candidates come from |a|^2 - 2ab + |b|^2 in float64 (a matrix product, in row blocks of
    ``block`` cells); the ``k - 1 + spare`` nearest other cells' distances are then recomputed
    directly as the sum of squared differences, which gives equal points bit-equal distances,
    and ordered by (distance, index). Near-ties closer than the rounding of ``pcs`` itself
    (float32 PCA scores, ~1e-7 relative) are still decided by that rounding."""
    x = np.asarray(pcs, np.float64)
    n = len(x)
    k = min(k, n)
    m = min(k - 1 + spare, n - 1)
    sq = (x ** 2).sum(1)
    idx = np.empty((n, k), np.int64)
    dist = np.zeros((n, k), np.float32)
    idx[:, 0] = np.arange(n)
    if k == 1:
        return idx, dist
    for lo in range(0, n, block):
        rows = np.arange(lo, min(lo + block, n))
        d2 = sq[rows, None] - 2 * x[rows] @ x.T + sq[None, :]
        d2[np.arange(len(rows)), rows] = np.inf  # self goes first, whatever its duplicates
        cand = np.argpartition(d2, m - 1, axis=1)[:, :m]
        exact = ((x[cand] - x[rows, None, :]) ** 2).sum(-1)
        order = np.lexsort((cand, exact), axis=1)[:, :k - 1]
        idx[rows, 1:] = np.take_along_axis(cand, order, 1)
        dist[rows, 1:] = np.sqrt(np.take_along_axis(exact, order, 1))
    return idx, dist


def fuzzy_connectivities(idx: np.ndarray, dist: np.ndarray, n_iter: int = 64) -> sp.csr_matrix:
    """UMAP's fuzzy simplicial set of a kNN graph (McInnes et al. 2018), as scanpy's
    ``neighbors`` computes its connectivities: per cell, rho = distance to the nearest other
    neighbour and sigma such that sum exp(-(d - rho) / sigma) = log2(k); memberships
    symmetrised by the probabilistic t-conorm a + b - ab. Binary search vectorised over cells."""
    n, k = idx.shape
    d = dist[:, 1:].astype(np.float64)  # drop self
    pos = np.where(d > 0, d, np.inf).min(1) if d.size else np.zeros(n)
    rho = np.where(np.isfinite(pos), pos, 0.0)
    target = np.log2(k)
    lo, hi, mid = np.zeros(n), np.full(n, np.inf), np.ones(n)
    shifted = np.maximum(d - rho[:, None], 0)
    for _ in range(n_iter):
        psum = np.exp(-shifted / mid[:, None]).sum(1)
        high = psum > target
        hi = np.where(high, mid, hi)
        lo = np.where(high, lo, mid)
        mid = np.where(high, (lo + hi) / 2, np.where(np.isinf(hi), mid * 2, (lo + hi) / 2))
    mean_i = dist.astype(np.float64).mean(1)  # self included, as UMAP does
    mid = np.maximum(mid, 1e-3 * np.where(rho > 0, mean_i, mean_i.mean()))
    w = np.exp(-shifted / mid[:, None])
    rows = np.repeat(np.arange(n), k - 1)
    P = sp.csr_matrix((w.ravel(), (rows, idx[:, 1:].ravel())), shape=(n, n))
    P.eliminate_zeros()
    Pt = P.T.tocsr()
    prod = P.multiply(Pt)
    return (P + Pt - prod).tocsr().astype(np.float32)


class _SeededRandom:
    """The interface igraph wants from a random number generator, over a seeded NumPy
    ``RandomState`` (the stream scanpy's ``flavor="igraph"`` gives igraph, so that the same
    graph and seed give the same clusters)."""

    def __init__(self, seed: int):
        self._rs = np.random.RandomState(seed)

    def getrandbits(self, k: int) -> int:
        return self._rs.tomaxint() & ((1 << k) - 1)

    def randint(self, a: int, b: int) -> int:
        return self._rs.randint(a, b + 1)

    def random(self) -> float:
        return self._rs.random_sample()

    def gauss(self, mu: float, sigma: float) -> float:
        return self._rs.normal(mu, sigma)


def undirected_graph(conn: sp.spmatrix) -> tuple[ig.Graph, list[float]]:
    """The igraph graph and edge weights Leiden sees for a symmetric matrix: each pair once
    (i < j) with twice its weight, self-loops once with theirs. scanpy's graph has every non-zero
    (i, j) as an edge, so each pair twice with its weight: node strengths, total weight and so the
    modularity are the same, with half the edges to build and scan, and the partition is the same
    (tests/test_labels.py; equal at 100k cells in bench/labels.py). Each pair once with its weight
    as given gives other clusters (ARI 0.70 at 100k cells): the refinement step weighs quality
    gains against a fixed randomness (beta), so the weights' scale matters."""
    coo = sp.coo_matrix(conn)
    upper = coo.row <= coo.col
    src, dst = coo.row[upper], coo.col[upper]
    w = coo.data[upper].astype(np.float64)
    w = np.where(src == dst, w, 2 * w)
    g = ig.Graph(n=conn.shape[0], directed=False)
    g.add_edges(np.column_stack([src, dst]))   # from the array itself: 3x faster than a list of pairs
    return g, w.tolist()


def leiden(conn: sp.csr_matrix, resolution: float = 4.0, seed: int = 0, n_iterations: int = 2) -> np.ndarray:
    """Leiden communities (Traag et al. 2019) of the weighted graph, modularity with resolution;
    clusters numbered by decreasing size (ties by first cell)."""
    import random

    g, weights = undirected_graph(conn)
    ig.set_random_number_generator(_SeededRandom(seed))
    try:
        part = g.community_leiden(objective_function="modularity", weights=weights,
                                  resolution=resolution, n_iterations=n_iterations)
    finally:
        ig.set_random_number_generator(random)
    memb = np.asarray(part.membership)
    sizes = np.bincount(memb)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    return rank[memb].astype(np.int32)
