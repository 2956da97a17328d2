"""The paper's label generation: clustering and DEGs equal scanpy's, voting and refinement as
the formulas say, stage caches, label table contract, config, errors."""

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import count_calls

from stx_platform.labels import cluster as C
from stx_platform.labels.cache import StageCache
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.degs import top_genes, wilcoxon_scores
from stx_platform.labels.pipeline import LabelInputError, label_expression
from stx_platform.labels.table import LABEL_SCHEMA, read_label_table, write_label_table
from stx_platform.labels.vote import classify_clusters, rank_weights
from stx_platform.taxonomy import CONNECTIVE, EPITHELIAL, INFLAMMATORY, NEOPLASTIC, UNKNOWN

warnings.filterwarnings("ignore", category=FutureWarning)


def _blobs(n=1500, genes=40, k=5, seed=0):
    """Counts with k planted groups, each over-expressing its own 8 genes."""
    rng = np.random.default_rng(seed)
    grp = rng.integers(0, k, n)
    mu = np.full((k, genes), 0.6)
    for i in range(k):
        mu[i, i * 8:(i + 1) * 8] = 6.0
    X = rng.poisson(mu[grp] * rng.uniform(0.5, 1.5, (n, 1)))
    a = ad.AnnData(sp.csr_matrix(X.astype(np.float32)), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=[f"G{j}" for j in range(genes)]))
    return a, grp


class StubDB:
    """A marker database with fixed per-gene votes over (Epi, Infl, Conn, Unknown)."""

    def __init__(self, votes: dict, organ_votes: dict | None = None, cancer=()):
        self._v, self._o, self.cancer = votes, organ_votes or {}, set(cancer)

    def votes(self, genes, organ, shared=False):
        src = ({**self._v, **self._o} if shared else self._o) if organ else self._v
        return np.array([src.get(g, [0, 0, 0, 0]) for g in genes], float).reshape(len(genes), 4)

    @property
    def cancer_genes(self):
        return {g.upper() for g in self.cancer}

    def cancer_genes_beyond_lineage(self, organ):
        return {g for g in self.cancer_genes if self.votes([g], organ, shared=True)[0, 0] < 0.5}

    def cancer_genes_of_epithelium(self):
        return {g for g in self.cancer_genes if self.votes([g], None)[0, 1:3].sum() <= 0.5}

    def tumour_genes(self, organ, exclude=frozenset()):
        return (self.cancer_genes_beyond_lineage(organ) & self.cancer_genes_of_epithelium()) - set(exclude)

    def cancer_overlap(self, genes):
        return sum(g in self.cancer for g in genes) / max(len(genes), 1)

    def content_hash(self):
        return "stub"


def _tie_tolerance(pcs: np.ndarray, i: int, d: float) -> float:
    """How far two distances from cell ``i`` can move under float32 rounding of |a|^2 - 2ab + |b|^2
    (how scanpy, and BLAS on another CPU, measure them): a few ulps of the squared norms, as a
    distance near ``d``."""
    sq = (pcs.astype(np.float64) ** 2).sum(1)
    return 8 * np.finfo(np.float32).eps * (sq[i] + sq.max()) / (2 * d)


def assert_same_neighbours_but_ties(pcs, idx, dist, ref_dist, min_equal=0.99):
    """Our kNN against a reference's (scanpy's ``distances``: each cell's k - 1 other neighbours):
    nearly every cell has the same neighbour set, and where a set differs, every neighbour in one
    set only lies at the k-th distance up to float32 rounding (a tie, which any CPU may break its
    own way). Returns the cells whose sets are equal."""
    ref = sp.csr_matrix(ref_dist)
    same = np.ones(len(pcs), bool)
    for i in range(len(pcs)):
        ours, theirs = set(idx[i, 1:].tolist()), set(ref.indices[ref.indptr[i]:ref.indptr[i + 1]].tolist())
        if ours == theirs:
            continue
        same[i] = False
        kth = float(dist[i, -1])
        for j in ours ^ theirs:
            dj = float(np.linalg.norm(pcs[i].astype(np.float64) - pcs[j]))
            assert abs(dj - kth) <= _tie_tolerance(pcs, i, kth), (i, j, dj, kth)
    assert same.mean() >= min_equal, same.mean()
    return same


def test_preprocessing_pca_graph_and_clusters_agree_with_scanpy():
    """Compared by what a user relies on, so that it holds on any CPU: neighbour sets equal but for
    ties at the k-th neighbour, connectivities equal where both ends have the same neighbours,
    Leiden equal to scanpy's on the same graph, clusters that never mix the planted groups."""
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score

    a, grp = _blobs()
    b = a.copy()
    sc.pp.normalize_total(b)
    sc.pp.log1p(b)
    X = C.normalise_log1p(a.X)
    assert abs(X - b.X).max() < 1e-5
    pcs = C.pca(X, 20)
    sc.pp.pca(b, n_comps=20)
    for j in range(5):  # components equal up to sign
        assert abs(abs(np.corrcoef(pcs[:, j], b.obsm["X_pca"][:, j])[0, 1]) - 1) < 1e-6
    b.obsm["X_pca"] = pcs
    sc.pp.neighbors(b, n_neighbors=15, use_rep="X_pca")
    idx, dist = C.knn(pcs, 15)
    same = assert_same_neighbours_but_ties(pcs, idx, dist, b.obsp["distances"])
    conn = C.fuzzy_connectivities(idx, dist)
    both = sp.diags(same.astype(np.float32))
    assert abs(both @ (conn - b.obsp["connectivities"]) @ both).max() < 1e-3
    sc.tl.leiden(b, resolution=2.0, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    assert adjusted_rand_score(C.leiden(b.obsp["connectivities"], 2.0, 0), b.obs["leiden"]) > 0.99
    ours = C.leiden(conn, 2.0, 0)
    mixed = pd.crosstab(ours, grp)
    assert (mixed.max(1).sum() / len(grp)) > 0.99  # each cluster holds one planted group
    assert np.all(np.diff(np.bincount(ours)) <= 0)  # numbered by size


@pytest.mark.parametrize("resolution", [1.0, 4.0])
def test_leiden_on_each_pair_once_equals_scanpys_graph_with_each_pair_twice(resolution):
    """Each pair once with twice its weight (and a self-loop once): the same partition, exactly,
    as the graph scanpy builds (every non-zero (i, j) of the matrix an edge)."""
    import random

    import igraph as ig

    a, _ = _blobs(n=3000, genes=40, k=6, seed=2)
    X = C.normalise_log1p(a.X)
    conn = C.fuzzy_connectivities(*C.knn(C.pca(X, 20), 15)).tolil()
    conn[[5, 17], [5, 17]] = 0.5  # self-loops count once in both
    conn = conn.tocsr()
    src, dst = conn.nonzero()
    g = ig.Graph(n=conn.shape[0], edges=list(zip(src, dst)), directed=False)
    ig.set_random_number_generator(C._SeededRandom(0))
    try:
        ref = g.community_leiden(objective_function="modularity", weights=np.asarray(conn[src, dst]).ravel(),
                                 resolution=resolution, n_iterations=2).membership
    finally:
        ig.set_random_number_generator(random)
    g1, w1 = C.undirected_graph(conn)
    assert g1.ecount() == (len(src) + 2) // 2
    ours = C.leiden(conn, resolution, 0)
    assert len(np.unique(ours)) > 3
    np.testing.assert_array_equal(pd.crosstab(ours, np.asarray(ref)).gt(0).sum(1), 1)  # same partition
    np.testing.assert_array_equal(pd.crosstab(np.asarray(ref), ours).gt(0).sum(1), 1)


def test_nndescent_finds_the_exact_neighbours_and_a_fresh_process_loads_its_kernels(tmp_path):
    """NN-descent's graph against the exact one (clustered points, noisy within clusters as PCA
    scores are): self first, then most of the true nearest, at their true distances, nearest first;
    the same seed gives the same graph; a fresh process on a node where one ran before (a Ray slide
    task) loads every kernel from numba's cache, compiling none."""
    import subprocess
    import sys

    from stx_platform.labels.nndescent import neighbor_graph

    rng = np.random.default_rng(4)
    centres = rng.normal(scale=3, size=(20, 30))
    pcs = (centres[rng.integers(0, 20, 9000)] + rng.normal(size=(9000, 30))).astype(np.float32)
    idx, dist = neighbor_graph(pcs, 15, 3, n_trees=10, n_iters=13)
    exact, _ = C.exact_knn(pcs, 15)
    assert idx.shape == dist.shape == (9000, 15)
    np.testing.assert_array_equal(idx[:, 0], np.arange(9000))
    assert (dist[:, 0] == 0).all() and (np.diff(dist, axis=1) >= 0).all()
    assert all(len(set(r)) == 15 for r in idx)
    true = np.linalg.norm(pcs[idx].astype(np.float64) - pcs[:, None], axis=-1)
    np.testing.assert_allclose(dist, true, rtol=1e-4, atol=1e-5)
    recall = np.mean([len(set(a[1:]) & set(b[1:])) / 14 for a, b in zip(idx, exact)])
    assert recall >= 0.95, recall
    again = neighbor_graph(pcs, 15, 3, n_trees=10, n_iters=13)
    np.testing.assert_array_equal(again[0], idx)
    np.testing.assert_array_equal(again[1], dist)

    code = ("import numpy as np\n"
            "from stx_platform.labels import nndescent as N\n"
            "N.neighbor_graph(np.random.default_rng(0).normal(size=(300, 5)), 8, 0, 4, 5)\n"
            "kernels = [N._forest_leaves, N._leaf_pairs, N._descent]\n"
            "print(sum(len(f.stats.cache_hits) for f in kernels), sum(len(f.stats.cache_misses) for f in kernels))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "node-cache"), "NUMBA_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr[-3000:]
    hits_misses = [tuple(map(int, r.stdout.split()[-2:])) for r in runs]
    assert hits_misses == [(0, 3), (3, 0)], hits_misses   # compiled once per node, then loaded


def test_exact_knn_orders_ties_by_index_whatever_the_row_order():
    """Duplicated cells are exact ties: self first, then the duplicates by index, on every CPU;
    permuting the cells permutes the distances and nothing else."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 6)).astype(np.float32)
    pcs = np.concatenate([base, base[:10], base[:10]])  # cells i, 40 + i and 50 + i coincide (i < 10)
    idx, dist = C.exact_knn(pcs, 5, block=7)
    np.testing.assert_array_equal(idx[:, 0], np.arange(len(pcs)))
    for i in range(10):
        np.testing.assert_array_equal(idx[i, :3], [i, 40 + i, 50 + i])
        np.testing.assert_array_equal(idx[50 + i, :3], [50 + i, i, 40 + i])
        assert dist[i, 1] == dist[i, 2] == 0
    d = np.sqrt(((pcs[:, None].astype(np.float64) - pcs[None]) ** 2).sum(-1))
    np.testing.assert_allclose(dist, np.take_along_axis(d, idx, 1), rtol=1e-6)
    assert np.all(np.diff(dist, axis=1) >= 0)
    perm = rng.permutation(len(pcs))
    np.testing.assert_array_equal(C.exact_knn(pcs[perm], 5)[1], dist[perm])


def test_wilcoxon_scores_equal_scanpy_on_ties_and_zeros():
    import scanpy as sc

    a, grp = _blobs(n=600, genes=12, k=3)
    a.X = sp.csr_matrix(np.minimum(a.X.toarray(), 3))  # many ties
    z = wilcoxon_scores(a.X, grp)
    a.obs["g"] = pd.Categorical(grp.astype(str))
    sc.tl.rank_genes_groups(a, "g", method="wilcoxon")
    rg = a.uns["rank_genes_groups"]
    for k in range(3):
        ref = dict(zip(rg["names"][str(k)], rg["scores"][str(k)]))
        np.testing.assert_allclose(z[k], [ref[g] for g in a.var_names], rtol=1e-4, atol=1e-4)
    assert top_genes(z, a.var_names, 3)[0] == list(a.var_names[np.argsort(-z[0], kind="stable")[:3]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wilcoxon_scores_equal_rankdata_z_scores(dtype):
    """The one-key sort of the non-zero entries ranks as scipy's rankdata over each whole gene
    (average ranks on ties, zeros included), for float32 (bit-packed key) and other dtypes."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    n, g, k = 500, 9, 4
    dense = rng.choice([0, 0, 0, 0.5, 1.0, 1.5, 2.0], size=(n, g)) * rng.choice([1, 1, 1.0001], size=(n, g))
    dense[:, 0] = 0  # a gene without counts
    dense[:, 1] = 1.25  # a gene without zeros, all tied
    dense = dense.astype(dtype)
    grp = rng.integers(0, k, n)
    z = wilcoxon_scores(sp.csr_matrix(dense), grp)
    r = np.column_stack([rankdata(dense[:, j]) for j in range(g)])
    n_k = np.bincount(grp)[:, None].astype(float)
    R = np.stack([r[grp == c].sum(0) for c in range(k)])
    ref = (R - n_k * (n + 1) / 2) / np.sqrt(n_k * (n - n_k) * (n + 1) / 12)
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)


def test_votes_follow_the_formula_fallback_unknown_and_neoplastic():
    np.testing.assert_array_equal(rank_weights(4, True), [3, 2, 1, 0])
    np.testing.assert_array_equal(rank_weights(4, False), [1, 1, 1, 1])
    epi, inf, con = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]
    db = StubDB({"E1": epi, "E2": epi, "I1": inf, "C1": con, "K1": epi, "K2": epi},
                organ_votes={"E1": epi, "E2": epi}, cancer={"K1", "K2", "X"})
    cfg = LabelConfig(top_n=4, top_m=4, tau_vote=3.0, tau_cancer=0.25)
    top = [["E1", "E2", "I1", "C1"],     # organ votes: 3*1 + 2*1 = 5 >= 3 -> Epithelial, overlap 0
           ["I1", "C1", "I1", "E1"],     # organ votes 0 -> fallback: infl 3+1, conn 2 -> Inflammatory
           ["Z1", "Z2", "Z3", "E1"],     # votes 0 (weight of 4th gene is 0) -> Unknown
           ["E1", "K1", "K2", "E2"]]     # Epithelial, overlap 2/4 = 0.5 > 0.25 -> Neoplastic
    t = classify_clusters(top, "breast", db, cfg)
    assert list(t["label"]) == [EPITHELIAL, INFLAMMATORY, UNKNOWN, NEOPLASTIC]
    assert list(t["fallback"]) == [False, True, True, False]
    assert t.loc[0, "votes_epithelial"] == 5 and t.loc[1, "votes_inflammatory"] == 4
    assert t.loc[1, "votes_connective"] == 2 and t.loc[3, "cancer_overlap"] == 0.5
    no_hier = classify_clusters(top, "breast", db, cfg.model_copy(update={"hierarchy": False}))
    assert no_hier.loc[3, "label"] == EPITHELIAL
    flat = classify_clusters(top, "breast", db, cfg.model_copy(update={"rank_weighting": False}))
    assert flat.loc[2, "label"] == UNKNOWN and flat.loc[2, "votes_total"] == 1  # 1 < tau_vote
    assert classify_clusters(top, None, db, cfg).loc[0, "fallback"] == False  # noqa: E712 (no organ: no fallback)


def _planted_db(a):
    # groups 0..4 over-express G0-7, G8-15, ...: make them Epi, Epi+cancer, Infl, Conn, nothing
    v = {}
    for j in range(8):
        v[f"G{j}"] = [1, 0, 0, 0]
        v[f"G{8 + j}"] = [1, 0, 0, 0]
        v[f"G{16 + j}"] = [0, 1, 0, 0]
        v[f"G{24 + j}"] = [0, 0, 1, 0]
    return StubDB(v, cancer={f"G{8 + j}" for j in range(8)})


@pytest.mark.parametrize("method", ["improved", "paper"])
def test_label_expression_recovers_planted_classes_and_writes_the_contract(tmp_path, method):
    a, grp = _blobs()
    res = label_expression(a, "breast", LabelConfig(resolution=1.0, method=method), _planted_db(a), sample_id="S1")
    want = np.array([EPITHELIAL, NEOPLASTIC, INFLAMMATORY, CONNECTIVE, UNKNOWN])[grp]
    assert (res.cells["label"].to_numpy() == want).mean() > 0.97
    table = res.to_arrow()
    assert table.schema.remove_metadata() == LABEL_SCHEMA
    url = str(tmp_path / res.meta["label_set_id"] / "S1.parquet")
    write_label_table(url, table)
    cells, meta = read_label_table(url)
    assert meta["sample_id"] == "S1" and meta["config"]["resolution"] == 1.0
    assert list(cells.index[:2]) == ["c0", "c1"] and set(cells["label"]) <= set(want)


def test_relabel_reuses_cached_degs_and_never_reclusters(tmp_path, monkeypatch):
    a, _ = _blobs(n=800)
    db = _planted_db(a)
    calls = count_calls(monkeypatch, C, ("leiden", "knn"))
    cache = str(tmp_path / "cache")
    first = label_expression(a, "breast", LabelConfig(resolution=1.0), db, sample_id="S", cache=cache)
    assert calls == {"leiden": 1, "knn": 1} and not any(first.cache_hits.values())
    for change in ({"top_n": 5}, {"tau_vote": 2.0}, {"cancer_alpha": 0.001}, {"rank_weighting": False},
                   {"hierarchy": False}, {"top_m": 10}, {"min_z": 4.0}, {"shared_lineages": False},
                   {"method": "paper"}, {"method": "paper", "tau_cancer": 0.5}):
        r = label_expression(a, "breast", LabelConfig(resolution=1.0, **change), db, sample_id="S", cache=cache)
        assert r.cache_hits["degs"] and r.meta["label_set_id"] != first.meta["label_set_id"]
    assert calls == {"leiden": 1, "knn": 1}
    label_expression(a, "breast", LabelConfig(resolution=2.0), db, sample_id="S", cache=cache)
    assert calls == {"leiden": 2, "knn": 1}  # new resolution: graph reused, Leiden rerun
    a2 = a.copy()
    a2.X = a2.X.copy()
    a2.X.data[0] += 1  # other expression: nothing may be reused
    r = label_expression(a2, "breast", LabelConfig(resolution=1.0), db, sample_id="S", cache=cache)
    assert calls == {"leiden": 3, "knn": 2} and not any(r.cache_hits.values())


def test_clear_errors_for_unusable_expression():
    a, _ = _blobs(n=200)
    db = _planted_db(a)
    with pytest.raises(LabelInputError, match="30 cells; clustering needs at least 50"):
        label_expression(a[:30].copy(), "breast", LabelConfig(), db, sample_id="S")
    z = a.copy()
    z.X = sp.csr_matrix(z.shape, dtype=np.float32)
    with pytest.raises(LabelInputError, match="all expression is zero"):
        label_expression(z, "breast", LabelConfig(), db, sample_id="S")
    with pytest.raises(LabelInputError, match="no gene of the panel"):
        label_expression(a, "breast", LabelConfig(), StubDB({}), sample_id="S")


def test_config_yaml_overrides_and_stable_hash(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("labels:\n  resolution: 2.5\n  top_n: 8\n")
    c = LabelConfig.load(str(p), ["tau_cancer=0.3", "markers.panglaodb=/data/p.tsv"])
    assert (c.resolution, c.top_n, c.tau_cancer, c.markers.panglaodb) == (2.5, 8, 0.3, "/data/p.tsv")
    d = LabelConfig()
    assert (d.resolution, d.top_n, d.top_m, d.tau_vote, d.tau_cancer, d.rank_weighting, d.hierarchy) == \
        (4.0, 10, 20, 5.0, 0.25, True, True)
    assert d.label_set_id("m") == LabelConfig.load(None).label_set_id("m")
    assert d.label_set_id("m") != d.label_set_id("n") != LabelConfig(top_n=9).label_set_id("m")
    assert LabelConfig.load(None, [f"{k}={v}" for k, v in {"resolution": 2.5, "top_n": 8}.items()]).top_n == 8
    with pytest.raises(ValueError):
        LabelConfig.load(None, ["no_such_field=1"])
    with pytest.raises(ValueError):
        LabelConfig.load(None, ["tau_cancer=2"])


def test_stage_cache_in_memory_and_on_storage(tmp_path):
    for url in (None, str(tmp_path)):
        c = StageCache(url, "S")
        assert c.get("degs", "k") is None
        c.put("degs", "k", z=np.arange(3.0))
        np.testing.assert_array_equal(c.get("degs", "k")["z"], [0, 1, 2])
        assert c.hits["degs"]
