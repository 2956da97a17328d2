"""Approximate kNN graph, euclidean: NN-descent (Dong, Moses & Li 2011) started from the leaves of
a random-projection forest, the algorithm pynndescent runs for scanpy, with the same settings.

Why not pynndescent itself: its kernels that take the metric as an argument cannot be cached by
numba, so every fresh process (each Ray slide task on a new worker) compiled them again, ~6 CPU s
at 100k cells before any work. These kernels are euclidean only and declared ``cache=True``: a
fresh process loads them from numba's cache (~0.4 s). Graph quality is measured against the exact
graph in tests/test_labels.py and bench/knn.py (recall of the 14 nearest on synthetic PCA scores:
0.836 at 100k cells and 0.755 at 500k, pynndescent's 0.839 and 0.759 on the same points).

The steps:
- forest: ``n_trees`` trees, each splitting its points by the hyperplane halfway between two
  random points until a node holds at most ``leaf_size``; every pair in a leaf is a first guess;
- descent: each round, every point's neighbours and reverse neighbours not yet compared (at most
  ``max_candidates`` of each kind, sampled at random) are compared pairwise, and each pair closer
  than a point's current farthest neighbour replaces it; stop when a round changes fewer than
  ``delta * n * k`` entries or after ``n_iters`` rounds.
The points are first put in the order of a random-projection tree's leaves, so that near points
lie near in memory (1.4x faster at 500k cells, where the points outgrow the CPU's caches), and
rows the forest leaves short are topped up with random points. Squared distances in float32;
the seed makes the graph reproducible on one machine.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _sqdist(x, a, b):
    s = np.float32(0.0)
    for t in range(x.shape[1]):
        v = x[a, t] - x[b, t]
        s += v * v
    return s


@numba.njit(cache=True, nogil=True, inline="always")
def _push(idx, key, flag, i, p, d):
    """Offer ``p`` with key ``d`` to row ``i``'s max-heap (root: largest key), unless it is there
    already; 1 if it went in. ``flag`` (or None) marks entries new since they were last sampled."""
    k = idx.shape[1]
    if d >= key[i, 0]:
        return 0
    for j in range(k):
        if idx[i, j] == p:
            return 0
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= k:
            break
        if c + 1 < k and key[i, c + 1] > key[i, c]:
            c += 1
        if key[i, c] <= d:
            break
        idx[i, pos] = idx[i, c]
        key[i, pos] = key[i, c]
        if flag is not None:
            flag[i, pos] = flag[i, c]
        pos = c
    idx[i, pos] = p
    key[i, pos] = d
    if flag is not None:
        flag[i, pos] = 1
    return 1


@numba.njit(cache=True, nogil=True, fastmath=True)
def _forest_leaves(x, leaf_size, perm, seed):
    """One random-projection tree: ``perm`` reordered so that each leaf is a contiguous run;
    returns the runs' boundaries."""
    np.random.seed(seed)
    n, d = x.shape
    stack = [(0, n)]
    bounds = [n]
    proj = np.empty(n, np.float32)
    normal = np.empty(d, np.float32)
    while len(stack) > 0:
        lo, hi = stack.pop()
        if hi - lo <= leaf_size:
            bounds.append(lo)
            continue
        a = perm[lo + np.random.randint(hi - lo)]
        b = perm[lo + np.random.randint(hi - lo)]
        offset = np.float32(0.0)
        for t in range(d):
            normal[t] = x[a, t] - x[b, t]
            offset += normal[t] * np.float32(0.5) * (x[a, t] + x[b, t])
        for i in range(lo, hi):
            s = -offset
            for t in range(d):
                s += x[perm[i], t] * normal[t]
            proj[i] = s
        i, j = lo, hi - 1
        while i <= j:      # partition by the side of the hyperplane
            if proj[i] < 0:
                i += 1
            else:
                proj[i], proj[j] = proj[j], proj[i]
                perm[i], perm[j] = perm[j], perm[i]
                j -= 1
        mid = i if lo < i < hi else lo + (hi - lo) // 2   # all on one side (duplicates): halve
        stack.append((lo, mid))
        stack.append((mid, hi))
    return np.sort(np.array(bounds, np.int64))


@numba.njit(cache=True, nogil=True)
def _leaf_pairs(x, idx, dist, flag, perm, bounds):
    for s in range(len(bounds) - 1):
        for u in range(bounds[s], bounds[s + 1]):
            a = perm[u]
            for v in range(u + 1, bounds[s + 1]):
                b = perm[v]
                d = _sqdist(x, a, b)
                if d < dist[a, 0]:
                    _push(idx, dist, flag, a, b, d)
                if d < dist[b, 0]:
                    _push(idx, dist, flag, b, a, d)


@numba.njit(cache=True, nogil=True)
def _fill_random(x, idx, dist, flag, seed):
    """Rows the forest left short (points in small leaves) topped up with random points."""
    n = idx.shape[0]
    np.random.seed(seed)
    for i in range(n):
        while dist[i, 0] == np.inf:
            p = np.random.randint(n)
            if p != i:
                _push(idx, dist, flag, i, p, _sqdist(x, i, p))


@numba.njit(cache=True, nogil=True)
def _descent(x, idx, dist, flag, max_candidates, n_iters, delta, seed):
    n, k = idx.shape
    np.random.seed(seed)
    new = np.empty((n, max_candidates), np.int32)
    old = np.empty((n, max_candidates), np.int32)
    new_w = np.empty((n, max_candidates), np.float32)
    old_w = np.empty((n, max_candidates), np.float32)
    for _ in range(n_iters):
        new[:] = -1
        old[:] = -1
        new_w[:] = np.inf
        old_w[:] = np.inf
        for i in range(n):        # sample: keep the candidates with the smallest random weights
            for j in range(k):
                p = idx[i, j]
                if p < 0:
                    continue
                w = np.float32(np.random.random())
                if flag[i, j]:
                    _push(new, new_w, None, i, p, w)
                    _push(new, new_w, None, p, i, w)
                else:
                    _push(old, old_w, None, i, p, w)
                    _push(old, old_w, None, p, i, w)
        for i in range(n):        # sampled new neighbours are old from now on
            for j in range(k):
                if flag[i, j]:
                    for t in range(max_candidates):
                        if new[i, t] == idx[i, j]:
                            flag[i, j] = 0
                            break
        changes = 0
        for i in range(n):        # local join: new x new and new x old
            for s in range(max_candidates):
                a = new[i, s]
                if a < 0:
                    continue
                for t in range(s + 1, max_candidates + max_candidates):
                    b = new[i, t] if t < max_candidates else old[i, t - max_candidates]
                    if b < 0 or b == a:
                        continue
                    d = _sqdist(x, a, b)
                    if d < dist[a, 0]:
                        changes += _push(idx, dist, flag, a, b, d)
                    if d < dist[b, 0]:
                        changes += _push(idx, dist, flag, b, a, d)
        if changes <= delta * n * k:
            break


def scanpy_settings(n: int) -> dict:
    """The forest size and round cap scanpy's ``neighbors`` (through UMAP) gives pynndescent for
    ``n`` points."""
    return {"n_trees": min(64, 5 + round(n ** 0.5 / 20.0)), "n_iters": max(5, round(np.log2(n)))}


def neighbor_graph(data: np.ndarray, n_neighbors: int, seed: int, n_trees: int, n_iters: int,
                   leaf_size: int | None = None, max_candidates: int | None = None, delta: float = 0.001
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), n x ``n_neighbors``: each point itself first (distance 0), then its
    ``n_neighbors - 1`` nearest others found, nearest first (ties by index). ``leaf_size`` and
    ``max_candidates`` default to pynndescent's: max(10, n_neighbors) and min(60, n_neighbors)."""
    data = np.ascontiguousarray(data, np.float32)
    if not np.isfinite(data).all():
        raise ValueError("kNN graph: the points have NaN or infinite coordinates")
    n = len(data)
    k = max(1, min(n_neighbors - 1, n - 1))
    leaf_size = leaf_size or max(10, n_neighbors)
    max_candidates = max_candidates or min(60, n_neighbors)
    # the points in the first tree's leaf order: near points near in memory (fewer cache misses)
    first = np.arange(n, dtype=np.int64)
    _forest_leaves(data, leaf_size, first, seed)
    x = data[first]
    idx = np.full((n, k), -1, np.int32)
    dist = np.full((n, k), np.inf, np.float32)
    flag = np.zeros((n, k), np.uint8)
    for t in range(n_trees):
        perm = np.arange(n, dtype=np.int64)
        _leaf_pairs(x, idx, dist, flag, perm, _forest_leaves(x, leaf_size, perm, seed + 7919 * t))
    _fill_random(x, idx, dist, flag, seed)
    _descent(x, idx, dist, flag, max_candidates, n_iters, delta, seed)
    back = np.empty(n, np.int64)
    back[first] = np.arange(n)
    idx, dist = first[idx[back]], dist[back]     # rows and ids in the caller's order
    order = np.lexsort((idx, dist), axis=1)
    out_i = np.empty((n, k + 1), np.int64)
    out_d = np.zeros((n, k + 1), np.float32)
    out_i[:, 0] = np.arange(n)
    out_i[:, 1:] = np.take_along_axis(idx, order, 1)
    out_d[:, 1:] = np.sqrt(np.take_along_axis(dist, order, 1))
    return out_i, out_d
