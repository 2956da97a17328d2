"""Label one slide: expression (AnnData) + organ + LabelConfig -> label table, through the
stage caches. Pure of Ray: the build job distributes ``label_sample`` over slides."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from stx_platform import __version__
from stx_platform.labels import cluster as C
from stx_platform.labels.cache import StageCache, fingerprint, stage_key
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.degs import ClusterMoments, cluster_moments, wilcoxon_scores
from stx_platform.labels.table import LABEL_SCHEMA, to_arrow
from stx_platform.labels.vote import VOTE_COLUMNS, label_clusters
from stx_platform.organs import canonical_organ
from stx_platform.progress import Progress
from stx_platform.taxonomy import UNKNOWN


class LabelInputError(ValueError):
    """The expression cannot be labelled (too few cells, no counts, no marker gene in the panel)."""


@dataclass
class LabelResult:
    sample_id: str
    cells: pd.DataFrame        # LABEL_SCHEMA's columns, one row per cell
    clusters: pd.DataFrame     # one row per cluster: label, votes, fallback, overlap, top genes, n_cells
    meta: dict
    timings: dict = field(default_factory=dict)
    cache_hits: dict = field(default_factory=dict)

    def to_arrow(self):
        return to_arrow(self.cells, self.meta)


def check_expression(adata, db, config: LabelConfig, sample_id: str = "") -> None:
    """Clear errors for what the clustering and the voting cannot work with."""
    who = f"sample {sample_id}: " if sample_id else ""
    if adata.n_obs < config.min_cells:
        raise LabelInputError(f"{who}{adata.n_obs} cells; clustering needs at least {config.min_cells} "
                              "(min_cells)")
    X = sp.csr_matrix(adata.X)
    if X.nnz == 0 or not np.any(X.data):
        raise LabelInputError(f"{who}all expression is zero ({adata.n_obs} cells x {adata.n_vars} genes)")
    if not db.votes(list(map(str, adata.var_names)), None).any():
        raise LabelInputError(f"{who}no gene of the panel ({adata.n_vars} genes, e.g. "
                              f"{', '.join(map(str, adata.var_names[:5]))}) is in the marker database")


def cluster_stages(adata, config: LabelConfig, cache: StageCache, say=None
                   ) -> tuple[np.ndarray, np.ndarray, ClusterMoments, dict]:
    """(clusters per cell, z-scores clusters x genes, per-cluster moments of the log-normalised
    expression, timings), each stage from the cache when it holds the same inputs."""
    say = say or Progress(None)
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    fp = fingerprint(adata.X, adata.obs_names, adata.var_names)
    gkey = stage_key("graph", fp, config.n_pcs, config.n_neighbors, config.seed)
    lkey = stage_key("leiden", gkey, config.resolution, config.seed)
    dkey = stage_key("degs", lkey, "cluster-moments")
    t["fingerprint"] = time.perf_counter() - t0

    degs = cache.get("degs", dkey)
    leid = cache.get("leiden", lkey) if degs is None else {"clusters": degs["clusters"]}
    X = None
    if leid is None:
        graph = cache.get("graph", gkey)
        t0 = time.perf_counter()
        if graph is None:
            X = C.normalise_log1p(adata.X)
            say(f"PCA + kNN graph of {adata.n_obs:,} cells")
            pcs = C.pca(X, config.n_pcs)
            t["pca"] = time.perf_counter() - t0
            idx, dist = C.knn(pcs, config.n_neighbors, config.seed)
            conn = C.fuzzy_connectivities(idx, dist)
            t["neighbors"] = time.perf_counter() - t0 - t["pca"]
            cache.put("graph", gkey, indptr=conn.indptr, indices=conn.indices, data=conn.data,
                      shape=np.array(conn.shape))
        else:
            conn = sp.csr_matrix((graph["data"], graph["indices"], graph["indptr"]), shape=tuple(graph["shape"]))
        t0 = time.perf_counter()
        say(f"Leiden at resolution {config.resolution}")
        clusters = C.leiden(conn, config.resolution, config.seed)
        t["leiden"] = time.perf_counter() - t0
        cache.put("leiden", lkey, clusters=clusters)
    else:
        clusters = leid["clusters"]
    if degs is None:
        t0 = time.perf_counter()
        X = C.normalise_log1p(adata.X) if X is None else X
        say(f"Wilcoxon DEGs of {int(clusters.max()) + 1} clusters")
        z = wilcoxon_scores(X, clusters)
        moments = cluster_moments(X, clusters)
        t["degs"] = time.perf_counter() - t0
        cache.put("degs", dkey, z=z, clusters=clusters, **moments._asdict())
    else:
        z = degs["z"]
        moments = ClusterMoments(degs["n"], degs["sums"], degs["sumsq"])
    return clusters, z, moments, t


def label_expression(adata, organ: str | None, config: LabelConfig, db, *, sample_id: str = "",
                     cache: StageCache | str | None = None, progress: Progress | None = None) -> LabelResult:
    """The paper's label generation for one slide. ``adata``: raw counts, cells x genes,
    obs_names = cell ids. ``cache``: a storage URL for the stage caches, a ``StageCache`` to share
    between calls, or None. Cells without any count are Unknown whatever their cluster says."""
    say = progress or Progress(None)
    t_start = time.perf_counter()
    check_expression(adata, db, config, sample_id)
    if not isinstance(cache, StageCache):
        cache = StageCache(cache, sample_id or "unnamed")
    cache.hits = {}
    clusters, z, moments, timings = cluster_stages(adata, config, cache, say)

    t0 = time.perf_counter()
    organ_key = canonical_organ(organ)
    genes = np.asarray(adata.var_names, dtype=object)
    table = label_clusters(z, genes, organ_key, db, config, moments)
    table["n_cells"] = np.bincount(clusters, minlength=len(table))
    per_cell = table.iloc[clusters].reset_index(drop=True)
    empty = np.asarray(adata.X.sum(1)).ravel() == 0
    cells = pd.DataFrame({"cell_id": np.asarray(adata.obs_names, dtype=str), "cluster": clusters.astype(np.int32),
                          "label": np.where(empty, UNKNOWN, per_cell["label"].to_numpy())})
    for c in (*VOTE_COLUMNS, "cancer_overlap", "fallback"):
        cells[c] = per_cell[c].to_numpy()
    timings["vote"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    markers_hash = db.content_hash()
    meta = {"sample_id": sample_id, "organ": organ, "organ_key": organ_key,
            "label_set_id": config.label_set_id(markers_hash), "markers_hash": markers_hash,
            "config": config.model_dump(), "stx_version": __version__,
            "clusters": table.astype(object).where(table.notna(), None).to_dict(orient="records")}
    assert list(cells.columns) == LABEL_SCHEMA.names
    return LabelResult(sample_id, cells, table, meta, timings, dict(cache.hits))
