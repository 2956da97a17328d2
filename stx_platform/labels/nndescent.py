"""pynndescent's kNN graph (what scanpy uses), compiled once per node instead of once per process.

pynndescent compiles its numba kernels in every fresh process (a Ray slide task): ~5 CPU s of
eagerly typed distances at import and ~15 CPU s on the first graph (``cache=False`` kernels, and
a driver that numba cannot cache: a global array default, ``numba.get_num_threads`` inside, the
distance passed as an argument, whose type numba keys per process). Here pynndescent is
imported with ``numba.njit`` forced to ``cache=True`` and numba's cache directory pointed at a
node-local folder, and the driver and the kernels that take the distance are declared again
below without those: the same calls and random stream, so the same graph as
``NNDescent(...).neighbor_graph`` (tests/test_labels.py). A fresh process with the cache filled
pays ~1.7 CPU s of import and a first graph as fast as a warm one (20k cells, bench/labels.py
for the whole pipeline). If pynndescent was imported before, its import was already paid, and
only the driver below is cached; if this module is imported first, pynndescent's own kernels
cache in the same folder for the rest of the process.

Cache folder: ``$STX_NUMBA_CACHE_DIR`` (empty: no cache), else ``~/.cache/stx/numba``, else the
temp dir; one subfolder per numba, pynndescent and Python version (a cached kernel embeds the
pynndescent code it was compiled from). Unwritable everywhere: nothing is cached, everything
compiles as plain pynndescent does. numba's global settings are only changed during the import.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings

import numpy as np


def cache_dir() -> str | None:
    """The first writable cache folder (see the module's docstring), or None."""
    from importlib.metadata import version

    env = os.environ.get("STX_NUMBA_CACHE_DIR")
    roots = [env] if env is not None else [os.path.join(os.path.expanduser("~"), ".cache", "stx", "numba"),
                                           os.path.join(tempfile.gettempdir(), f"stx-numba-{os.getuid()}")]
    tag = f"numba{version('numba')}-pynndescent{version('pynndescent')}-py{sys.version_info[0]}{sys.version_info[1]}"
    for root in roots:
        if not root:
            continue
        path = os.path.join(root, tag)
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
            return path
        except OSError:
            continue
    return None


@contextlib.contextmanager
def _numba_cached_in(path: str | None):
    """While inside: every ``numba.njit`` function declared caches in ``path`` (no-op if None)."""
    import numba
    from numba.core import config

    if path is None:
        yield
        return
    njit, old_dir = numba.njit, config.CACHE_DIR

    def cached_njit(*args, **kwargs):
        kwargs["cache"] = True
        return njit(*args, **kwargs)

    numba.njit, config.CACHE_DIR = cached_njit, path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)  # "cannot cache": compiled as before
            yield
    finally:
        numba.njit, config.CACHE_DIR = njit, old_dir


CACHE_DIR = cache_dir()

with _numba_cached_in(CACHE_DIR):
    import numba
    from pynndescent.distances import squared_euclidean
    from pynndescent.pynndescent_ import INT32_MAX, INT32_MIN
    from pynndescent.rp_trees import make_forest, rptree_leaf_array
    from pynndescent.utils import (apply_graph_updates_low_memory, checked_flagged_heap_push, deheap_sort,
                                   make_heap, new_build_candidates, tau_rand_int)

    # pynndescent 0.5.13's kernels (pynndescent_.py, BSD 2-clause, (c) Leland McInnes), each
    # ``dist(...)`` a call of squared_euclidean: pynndescent passes the distance as an argument,
    # whose type numba keys per process, so that a cache of them would never hit.

    @numba.njit(parallel=True)
    def _leaf_updates(leaf_block, dist_thresholds, data):
        updates = [[(-1, -1, np.inf)] for i in range(leaf_block.shape[0])]
        for n in numba.prange(leaf_block.shape[0]):
            for i in range(leaf_block.shape[1]):
                p = leaf_block[n, i]
                if p < 0:
                    break
                for j in range(i + 1, leaf_block.shape[1]):
                    q = leaf_block[n, j]
                    if q < 0:
                        break
                    d = squared_euclidean(data[p], data[q])
                    if d < dist_thresholds[p] or d < dist_thresholds[q]:
                        updates[n].append((p, q, d))
        return updates

    @numba.njit(locals={"d": numba.float32, "p": numba.int32, "q": numba.int32})
    def _init_rp_tree(data, current_graph, leaf_array):
        n_leaves = leaf_array.shape[0]
        block_size = 65536
        n_blocks = n_leaves // block_size
        for i in range(n_blocks + 1):
            block_start = i * block_size
            block_end = min(n_leaves, (i + 1) * block_size)
            leaf_block = leaf_array[block_start:block_end]
            dist_thresholds = current_graph[1][:, 0]
            updates = _leaf_updates(leaf_block, dist_thresholds, data)
            for j in range(len(updates)):
                for k in range(len(updates[j])):
                    p, q, d = updates[j][k]
                    if p == -1 or q == -1:
                        continue
                    checked_flagged_heap_push(current_graph[1][p], current_graph[0][p], current_graph[2][p], d, q,
                                              np.uint8(1))
                    checked_flagged_heap_push(current_graph[1][q], current_graph[0][q], current_graph[2][q], d, p,
                                              np.uint8(1))

    @numba.njit(fastmath=True, locals={"d": numba.float32, "idx": numba.int32, "i": numba.int32})
    def _init_random(n_neighbors, data, heap, rng_state):
        for i in range(data.shape[0]):
            if heap[0][i, 0] < 0.0:
                for j in range(n_neighbors - np.sum(heap[0][i] >= 0.0)):
                    idx = np.abs(tau_rand_int(rng_state)) % data.shape[0]
                    d = squared_euclidean(data[idx], data[i])
                    checked_flagged_heap_push(heap[1][i], heap[0][i], heap[2][i], d, idx, np.uint8(1))

    @numba.njit(parallel=True)
    def _graph_updates(new_candidate_block, old_candidate_block, dist_thresholds, data):
        block_size = new_candidate_block.shape[0]
        updates = [[(-1, -1, np.inf)] for i in range(block_size)]
        max_candidates = new_candidate_block.shape[1]
        for i in numba.prange(block_size):
            for j in range(max_candidates):
                p = int(new_candidate_block[i, j])
                if p < 0:
                    continue
                for k in range(j, max_candidates):
                    q = int(new_candidate_block[i, k])
                    if q < 0:
                        continue
                    d = squared_euclidean(data[p], data[q])
                    if d <= dist_thresholds[p] or d <= dist_thresholds[q]:
                        updates[i].append((p, q, d))
                for k in range(max_candidates):
                    q = int(old_candidate_block[i, k])
                    if q < 0:
                        continue
                    d = squared_euclidean(data[p], data[q])
                    if d <= dist_thresholds[p] or d <= dist_thresholds[q]:
                        updates[i].append((p, q, d))
        return updates

    @numba.njit()
    def _nn_descent(data, n_neighbors, rng_state, max_candidates, n_iters, delta, leaf_array, n_threads):
        """pynndescent's ``nn_descent`` for a new graph, tree-initialised, low-memory, squared
        euclidean, with ``nn_descent_internal_low_memory_parallel`` and ``process_candidates``
        inlined; the thread count is an argument (``numba.get_num_threads`` in compiled code is a
        dynamic global, which numba cannot cache)."""
        graph = make_heap(data.shape[0], n_neighbors)
        _init_rp_tree(data, graph, leaf_array)
        _init_random(n_neighbors, data, graph, rng_state)
        block_size = 16384
        n_vertices = data.shape[0]
        n_blocks = n_vertices // block_size
        for _ in range(n_iters):
            new_candidates, old_candidates = new_build_candidates(graph, max_candidates, rng_state, n_threads)
            c = 0
            for i in range(n_blocks + 1):
                block_start = i * block_size
                block_end = min(n_vertices, (i + 1) * block_size)
                updates = _graph_updates(new_candidates[block_start:block_end], old_candidates[block_start:block_end],
                                         graph[1][:, 0], data)
                c += apply_graph_updates_low_memory(graph, updates, n_threads)
            if c <= delta * n_neighbors * data.shape[0]:
                break
        return deheap_sort(graph[0], graph[1])


def neighbor_graph(data: np.ndarray, n_neighbors: int, seed: int, n_trees: int, n_iters: int,
                   delta: float = 0.001) -> tuple[np.ndarray, np.ndarray]:
    """``NNDescent(data, n_neighbors, metric="euclidean", random_state=seed, n_trees=n_trees,
    n_iters=n_iters, delta=delta, low_memory=True).neighbor_graph``: (indices, distances)."""
    data = np.ascontiguousarray(data, np.float32)
    rs = np.random.RandomState(seed)
    rng_state = rs.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    rs.randint(INT32_MIN, INT32_MAX, 3)  # NNDescent's search state: drawn, so the trees get the same seeds
    forest = make_forest(data, n_neighbors, n_trees, None, rng_state, rs, None, False, False, max_depth=200)
    leaves = rptree_leaf_array(forest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", numba.NumbaWarning)
        idx, d2 = _nn_descent(data, n_neighbors, rng_state, min(60, n_neighbors), n_iters, delta, leaves,
                              numba.get_num_threads())
    return idx, np.sqrt(d2)
