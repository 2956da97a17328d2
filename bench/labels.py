"""Benchmark: the label pipeline's clustering + DEGs against the plain scanpy recipe, in one process.

For each slide size: wall time and peak memory (resident set above its level at the start of
each run, sampled every 10 ms) of
  - recipe  : sc.pp.normalize_total, sc.pp.log1p, sc.pp.pca, sc.pp.neighbors, sc.tl.leiden (its
              default flavour, leidenalg), sc.tl.rank_genes_groups(method="wilcoxon");
  - recipe-igraph: the same with sc.tl.leiden(flavor="igraph", n_iterations=2), scanpy's advice;
  - stx     : stx_platform.labels (the same steps; see labels/cluster.py and labels/degs.py);
the adjusted Rand index between stx's clusters and each recipe's, beside the ARI of each recipe
with itself under another Leiden seed (the noise floor: Leiden at r = 4 is not stable), the
share of cells that get the same label from stx's clusters as from the recipe's, and the time
of a relabel (new top-N / tau_vote / alpha) on a stage-cache hit. Both sides are warmed up first (numba compiles
the recipe's pynndescent once per process, and loads stx's kernels), so times are steady-state. Expression: synthetic breast slides.

stx is also timed as a Ray slide task sees it: imports + first call in a fresh process (numba's kernels loaded
from the node's cache, as after one earlier task: ``stx_fresh_s``; from an empty cache: ``stx_cold_s``), with
its per-stage times; the target (issue 22) is stx_fresh_s <= 1/3 of recipe-igraph's. ``old`` is git revision
--baseline's code run the same way in the same run (its tree exported, its own kernels and cache): its fresh
time and its clusters (ARI, equal partition, same labels against it). ``--exact`` also clusters the exact kNN
graph (minutes at 100k cells) and reports how many cells each clustering labels as that one does, beside
the exact graph under another Leiden seed (the noise floor of that agreement).

    python bench/labels.py                     # 20k, 100k and 200k cells
    python bench/labels.py --cells 20000       # quicker
    python bench/labels.py --cells 100000 500000 --no-extras
    python bench/labels.py --cells 100000 --exact --baseline REV
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from revision import export_tree

warnings.filterwarnings("ignore")


def make_expression(n_cells: int, seed: int = 1) -> ad.AnnData:
    from stx_platform.synth.slide import build_slide
    from stx_platform.synth.panel import gene_panel

    s = build_slide("BENCH", "breast", seed, n_cells)
    a = ad.AnnData(sp.csr_matrix(s.counts.astype(np.float32)),
                   obs=pd.DataFrame(index=[f"c{i}" for i in range(s.n_cells)]),
                   var=pd.DataFrame(index=list(gene_panel())))
    return a


def _leiden(a: ad.AnnData, flavor: str, seed: int = 0) -> None:
    import scanpy as sc

    if flavor == "igraph":
        sc.tl.leiden(a, resolution=4.0, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    else:
        sc.tl.leiden(a, resolution=4.0, random_state=seed)


def recipe(a: ad.AnnData, flavor: str) -> ad.AnnData:
    """The plain scanpy recipe on a copy; seconds per step in the result's ``uns["stage_s"]``."""
    import scanpy as sc

    a = a.copy()
    steps = {"normalise": lambda: (sc.pp.normalize_total(a), sc.pp.log1p(a)),
             "pca": lambda: sc.pp.pca(a, n_comps=50),
             "neighbors": lambda: sc.pp.neighbors(a, n_neighbors=15),
             "leiden": lambda: _leiden(a, flavor),
             "degs": lambda: sc.tl.rank_genes_groups(a, "leiden", method="wilcoxon")}
    times = {}
    for name, step in steps.items():
        t = time.perf_counter()
        step()
        times[name] = time.perf_counter() - t
    a.uns["stage_s"] = times
    return a


def reseeded(a: ad.AnnData, flavor: str) -> np.ndarray:
    """The recipe's clusters from the same graph with another Leiden seed: the noise floor of ARI."""
    b = a.copy()
    _leiden(b, flavor, seed=1)
    return b.obs["leiden"].astype(int).to_numpy()


def labels_from(a: ad.AnnData, clusters: np.ndarray, db) -> np.ndarray:
    """The default method's labels from given clusters: how much the clustering matters."""
    from stx_platform.labels.cluster import normalise_log1p
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.degs import cluster_moments, wilcoxon_scores
    from stx_platform.labels.vote import label_clusters

    X = normalise_log1p(a.X)
    table = label_clusters(wilcoxon_scores(X, clusters), a.var_names, "breast", db, LabelConfig(),
                           cluster_moments(X, clusters))
    return table["label"].to_numpy()[clusters]


def ours(a: ad.AnnData) -> np.ndarray:
    from stx_platform.labels.cache import StageCache
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.pipeline import cluster_stages

    clusters, _, _, timings = cluster_stages(a, LabelConfig(), StageCache(None, "bench"))
    return clusters, timings


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


FRESH = """
import sys, time, json
import numpy as np
import scipy.sparse as sp
import anndata as ad, pandas as pd
X = sp.load_npz(sys.argv[1])
a = ad.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]),
               var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))
t = time.perf_counter()
from stx_platform.labels.cache import StageCache
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.pipeline import cluster_stages
clusters, _, _, timings = cluster_stages(a, LabelConfig(), StageCache(None, "bench"))
timings["seconds"] = time.perf_counter() - t
np.save(sys.argv[2], clusters)
print("RESULT " + json.dumps(timings))
"""


def fresh_first_call(a: ad.AnnData, cache_dir: str, tree: str = ROOT) -> tuple[dict, np.ndarray]:
    """(per-stage times and total seconds of imports + the first cluster_stages call, clusters) of
    the code in ``tree`` in a new Python process, numba's cache in ``cache_dir`` (the variable
    earlier revisions read for pynndescent's cache too)."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out = os.path.join(tmp, "X.npz"), os.path.join(tmp, "clusters.npy")
        sp.save_npz(path, sp.csr_matrix(a.X))
        env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "STX_NUMBA_CACHE_DIR": cache_dir,
               "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])}
        run = subprocess.run([sys.executable, "-c", FRESH, path, out], capture_output=True, text=True, env=env,
                             cwd=tree)
        if run.returncode:
            raise RuntimeError(f"first call in a fresh process failed ({tree}):\n{run.stderr[-3000:]}")
        clusters = np.load(out)
    line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), clusters


def exact_clusters(a: ad.AnnData, seeds=(0, 1)) -> list[np.ndarray]:
    """Clusters of the exact kNN graph (this code's PCA and Leiden), one per Leiden seed."""
    from stx_platform.labels import cluster as C
    from stx_platform.labels.config import LabelConfig

    cfg = LabelConfig()
    pcs = C.pca(C.normalise_log1p(a.X), cfg.n_pcs)
    conn = C.fuzzy_connectivities(*C.exact_knn(pcs, cfg.n_neighbors))
    return [C.leiden(conn, cfg.resolution, s) for s in seeds]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured(fn, *args):
    """(seconds, peak RSS above the RSS at the start in GB, result) of fn(*args); a thread samples
    the resident set every 10 ms (a fork would be unsafe: igraph/numba use OpenMP)."""
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.01)
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t
    stop.set()
    th.join()
    return dt, (max(peak[0], _rss()) - base) / 1e9, out


def relabel_time(a: ad.AnnData) -> tuple[float, float]:
    """(first labelling, relabel with other N / tau_vote on the cached DEGs), seconds."""
    from stx_platform.labels.cache import StageCache
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.markers import default_markers
    from stx_platform.labels.pipeline import label_expression

    db = default_markers()
    cache = StageCache(None, "bench")
    t = time.perf_counter()
    label_expression(a, "breast", LabelConfig(), db, cache=cache)
    first = time.perf_counter() - t
    t = time.perf_counter()
    r = label_expression(a, "breast", LabelConfig(top_n=8, tau_vote=4.0, cancer_alpha=0.01), db, cache=cache)
    assert r.cache_hits.get("degs"), r.cache_hits
    return first, time.perf_counter() - t


def main() -> None:
    from sklearn.metrics import adjusted_rand_score as ari

    from stx_platform.labels.markers import default_markers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="+", default=[20_000, 100_000, 200_000])
    ap.add_argument("--default-recipe-max", type=int, default=100_000,
                    help="skip the leidenalg recipe above this many cells (it takes tens of minutes)")
    ap.add_argument("--baseline", default="3a0d2c6", help="git revision whose code is timed and compared with")
    ap.add_argument("--no-extras", action="store_true",
                    help="skip the reseeded noise floor, the relabel timing and the cold-cache first call "
                         "(quicker at 500k cells)")
    ap.add_argument("--exact", action="store_true",
                    help="also label from the exact kNN graph, the reference for every clustering's labels")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="stx-bench-labels-")
    old_tree = export_tree(args.baseline, tmp)
    warm = make_expression(9000, seed=5)
    for fn in (lambda: recipe(warm, "leidenalg"), lambda: recipe(warm, "igraph"), lambda: ours(warm)):
        fn()
    print("warmed up (numba-compiled kernels: pynndescent for the recipe, stx's own; imports)\n")
    node_dir, old_node_dir = os.path.join(tmp, "node"), os.path.join(tmp, "old-node")
    fresh_first_call(warm, node_dir)  # the node's earlier task: fills its cache
    fresh_first_call(warm, old_node_dir, old_tree)
    nan = float("nan")
    rows = []
    for n in args.cells:
        t = time.perf_counter()
        a = make_expression(n)
        print(f"{a.n_obs:,} cells x {a.n_vars} genes (generated in {time.perf_counter() - t:.0f} s)", flush=True)
        t_i, m_i, ad_i = measured(recipe, a, "igraph")
        if a.n_obs <= args.default_recipe_max:
            t_r, m_r, ad_r = measured(recipe, a, "leidenalg")
        else:
            print("  (leidenalg recipe skipped: --default-recipe-max)")
            t_r, m_r, ad_r = nan, nan, None
        t_o, m_o, (cl_o, stages) = measured(ours, a)
        fresh, _ = fresh_first_call(a, node_dir)
        old_fresh, cl_old = fresh_first_call(a, old_node_dir, old_tree)
        cold = {"seconds": nan} if args.no_extras else fresh_first_call(a, tempfile.mkdtemp(dir=tmp))[0]
        cl_i = ad_i.obs["leiden"].astype(int).to_numpy()
        cl_r = ad_r.obs["leiden"].astype(int).to_numpy() if ad_r is not None else None
        first, again = (nan, nan) if args.no_extras else relabel_time(a)
        db = default_markers()
        lab_o, lab_i, lab_old = labels_from(a, cl_o, db), labels_from(a, cl_i, db), labels_from(a, cl_old, db)
        ratio = fresh["seconds"] / t_i
        row = {"cells": a.n_obs, "recipe_s": t_r, "recipe_igraph_s": t_i, "stx_s": t_o,
               "stx_fresh_s": fresh["seconds"], "stx_cold_s": cold["seconds"], "old_fresh_s": old_fresh["seconds"],
               "stx/recipe": t_o / t_r, "stx/recipe_igraph": t_o / t_i, "stx_fresh/recipe_igraph": ratio,
               "stx_cold/recipe_igraph": cold["seconds"] / t_i,
               "old_fresh/recipe_igraph": old_fresh["seconds"] / t_i,
               "stx_fresh/old_fresh": fresh["seconds"] / old_fresh["seconds"], "target_1/3_met": bool(ratio <= 1 / 3),
               **{f"recipe_igraph_{k}_s": v for k, v in ad_i.uns["stage_s"].items()},
               **{f"stage_{k}_s": v for k, v in stages.items()},
               **{f"fresh_{k}_s": v for k, v in fresh.items() if k != "seconds"},
               **{f"old_fresh_{k}_s": v for k, v in old_fresh.items() if k != "seconds"},
               "ARI_old": ari(cl_o, cl_old), "equal_partition_old": bool(np.array_equal(cl_o, cl_old)),
               "same_label_as_old": float(np.mean(lab_o == lab_old)),
               "ARI_recipe": ari(cl_o, cl_r) if cl_r is not None else nan, "ARI_recipe_igraph": ari(cl_o, cl_i),
               "ARI_recipe_vs_reseeded": ari(cl_r, reseeded(ad_r, "leidenalg"))
               if cl_r is not None and not args.no_extras else nan,
               "ARI_recipe_igraph_vs_reseeded": nan if args.no_extras else ari(cl_i, reseeded(ad_i, "igraph")),
               "same_label_as_recipe": float(np.mean(lab_o == labels_from(a, cl_r, db))) if cl_r is not None else nan,
               "same_label_as_recipe_igraph": float(np.mean(lab_o == lab_i)),
               "clusters_stx": int(cl_o.max()) + 1, "clusters_recipe_igraph": int(cl_i.max()) + 1,
               "peak_GB_recipe": m_r, "peak_GB_recipe_igraph": m_i, "peak_GB_stx": m_o,
               "label_first_s": first, "relabel_cached_s": again}
        if args.exact:
            lab_x, lab_x1 = (labels_from(a, c, db) for c in exact_clusters(a))
            row.update({f"same_label_as_exact_{k}": float(np.mean(lab == lab_x)) for k, lab in
                        (("stx", lab_o), ("old", lab_old), ("recipe_igraph", lab_i), ("exact_reseeded", lab_x1))})
        rows.append(row)
        for k, v in row.items():
            print(f"  {k:>24}: {v:.3f}" if isinstance(v, float) else f"  {k:>24}: {v}", flush=True)
        print(f"  target (stx first call in a fresh process <= 1/3 of recipe-igraph): "
              f"{'met' if row['target_1/3_met'] else 'NOT met'} ({ratio:.3f})", flush=True)
    print()
    print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.3f}"))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
