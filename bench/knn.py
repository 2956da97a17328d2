"""Benchmark: the kNN graph of labelling, stx's NN-descent (labels/nndescent.py) against
pynndescent's with the same settings (what scanpy runs), on the PCA scores of synthetic breast
expression: CPU seconds of one thread (both warm: compiled or loaded before timing) and recall of
the 14 true nearest others of ``--queries`` random cells (exact distances in float64).

    python bench/knn.py                       # 100k cells
    python bench/knn.py --cells 100000 500000
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from labels import make_expression  # noqa: E402

warnings.filterwarnings("ignore")


def stx_graph(pcs: np.ndarray, k: int, seed: int) -> np.ndarray:
    from stx_platform.labels.nndescent import neighbor_graph, scanpy_settings

    return neighbor_graph(pcs, k + 1, seed, **scanpy_settings(len(pcs)))[0]


def pynndescent_graph(pcs: np.ndarray, k: int, seed: int) -> np.ndarray:
    from pynndescent import NNDescent

    from stx_platform.labels.nndescent import scanpy_settings

    return NNDescent(pcs, n_neighbors=k + 1, metric="euclidean", random_state=seed, low_memory=True,
                     **scanpy_settings(len(pcs))).neighbor_graph[0]


def true_neighbours(pcs: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    x = pcs.astype(np.float64)
    d2 = (x[rows] ** 2).sum(1)[:, None] - 2 * x[rows] @ x.T + (x ** 2).sum(1)[None]
    d2[np.arange(len(rows)), rows] = np.inf
    return np.argsort(d2, 1)[:, :k - 1]


def main() -> None:
    from stx_platform.labels import cluster as C

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[100_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    k = 15
    small = np.random.default_rng(0).normal(size=(3000, 50)).astype(np.float32)
    for fn in (stx_graph, pynndescent_graph):
        fn(small, k, 0)   # compile / load the kernels first
    print(f"{'cells':>8} {'method':>12} {'CPU s':>7} {'recall@14':>10}")
    for n in args.cells:
        pcs = C.pca(C.normalise_log1p(make_expression(n).X))
        rows = np.random.default_rng(5).choice(n, min(args.queries, n), replace=False)
        truth = true_neighbours(pcs, rows, k)
        for name, fn in (("stx", stx_graph), ("pynndescent", pynndescent_graph)):
            t = time.process_time()
            idx = fn(pcs, k, args.seed)
            dt = time.process_time() - t
            recall = np.mean([len(set(idx[r, 1:k]) & set(t_)) / (k - 1) for r, t_ in zip(rows, truth)])
            print(f"{n:8d} {name:>12} {dt:7.2f} {recall:10.3f}", flush=True)


if __name__ == "__main__":
    main()
