"""Marker-gene voting per cluster and the neoplastic refinement (paper Sec. 4.1).

For cluster k with top-N DEGs g_1..g_N, s^k = sum_l w_l v(g_l), with w_l = N - l (rank
weighting, l = 1..N) or 1, and v(g) the gene's class-vote vector from the marker database
(each gene's vote is split across classes by its database entries, so it sums to 1 or 0).
Votes come from the slide organ's entries first; when their total is below tau_vote they come
from the whole, organ-agnostic database; still below, the cluster is Unknown. An Epithelial
cluster whose top-M DEGs overlap the cancer gene set by more than tau_cancer is Neoplastic.

``method: improved`` (:func:`classify_clusters_improved`) keeps that shape and fixes what goes
wrong on real slides; each fix is a ``LabelConfig`` option:

* ``shared_lineages``: the organ's votes include the organ-agnostic entries of the scored
  lineages. Stroma, vessels, muscle and immune cells are in every organ and an organ's own
  entries rarely list them, so a breast fibroblast cluster was voted Epithelial by ACTA2
  (myoepithelium) and the whole-database fallback never ran.
* ``up_markers``: the voters are the cluster's top-N *up-regulated* genes (z >= min_z) that the
  database knows. On a 20-gene panel most of a cluster's top-10 are genes it does not express;
  a cycling tumour cluster's top-10 are cell-cycle genes with no lineage.
* ``skip_state_genes``: cell-cycle, interferon and immediate-early genes (``state_genes()``) never
  vote: they are states of every lineage, and databases list them for "proliferating" or
  "activated" immune cells, so cycling carcinoma clusters were voted Inflammatory.
* ``specificity``: each voter is weighted by its class specificity over the whole database (1 -
  normalised entropy of its class shares) and genes below ``min_specificity`` do not vote.
* ``effect_weights``: voters weigh by their z against the strongest voter, not by rank alone, so
  genes barely up from neighbours' spill-over do not outvote the cluster's own marker.
* ``cancer_test``: Neoplastic needs the cancer genes among the top-M up-regulated genes to beat
  the panel's base rate (minimum-hypergeometric test, ``cancer_alpha``), counting only cancer
  genes that do not mark the organ's normal epithelium. With PanglaoDB + CellMarker + CancerSEA
  40 % of a panel is "cancer", so every cluster reached tau_cancer = 0.25.
* ``cancer_within_epithelium``: the same test on the genes an epithelial cluster up-regulates
  against the slide's least cancer-like epithelium, with the whole cancer set: what a carcinoma
  gains over its own tissue, not the lineage it shares with it.
* ``lineage_filter``: cancer genes that mark another lineage (CD45, CD31, CD20 reach CellMarker's
  cancer rows as negative-selection markers; collagens and POSTN as stromal programmes) are no
  tumour evidence in an epithelial cluster: a breast luminal cluster contrasted with myoepithelium
  no longer looks malignant because spill-over genes fill its list.
* ``tumour_coverage``: an epithelial cluster that up-regulates at least ``min_tumour_share`` of the
  panel's tumour genes (cancer genes beyond the organ's epithelium, of no other lineage, no cell
  state) is Neoplastic. A targeted 20-gene panel carries two or three such genes (ERBB2, CEACAM6);
  a carcinoma cluster up-regulates them all, normal epithelium none, and no enrichment test over
  20 genes reaches p < 0.05 with them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from stx_platform.labels.config import LabelConfig
from stx_platform.labels.degs import group_contrast
from stx_platform.labels.markers import state_genes
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


def _up_genes(z_row: np.ndarray, genes: np.ndarray, min_z: float, with_z: bool = False):
    """Genes with z >= min_z, most up-regulated first (stable on ties); with their z on request."""
    order = np.argsort(-z_row, kind="stable")
    order = order[z_row[order] >= min_z]
    return (genes[order], z_row[order]) if with_z else genes[order]


def specificity(v: np.ndarray) -> np.ndarray:
    """1 - normalised entropy of each gene's class shares: 1 for a gene whose entries all name one
    class (CD3E), near 0 for one listed for every lineage (MKI67 marks cycling cells of all of
    them); 0 for a gene without entries."""
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(np.where(v > 0, v * np.log(v), 0.0), axis=1) / np.log(v.shape[1])
    return np.where(v.sum(1) > 0, 1.0 - h, 0.0)


def _gene_facts(up: np.ndarray, db, config: LabelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(specificity, may vote) of a cluster's up-regulated genes, the same in every vote scope.
    Specificity is over the whole database: GATA3 marks T cells and luminal cells, even where a
    database lists it for only one of them in this organ's scope."""
    spec = specificity(db.votes(list(up), None)) if config.specificity and len(up) else np.ones(len(up))
    states = state_genes() if config.skip_state_genes else frozenset()
    ok = np.array([str(g).upper() not in states for g in up], bool)
    if config.specificity:
        ok &= spec >= config.min_specificity
    return spec, ok


def _vote(up: np.ndarray, organ: str | None, db, config: LabelConfig, shared: bool,
          up_z: np.ndarray | None = None, facts=None) -> tuple[np.ndarray, list[str]]:
    """Weighted votes of the top-N up-regulated genes that have entries in this scope."""
    if not config.up_markers:
        voters = [str(g) for g in up[:config.top_n]]
        v = db.votes(voters, organ, shared) if voters else np.zeros((0, len(VOTE_CLASSES)))
        w = rank_weights(config.top_n, config.rank_weighting)[:len(voters)]
        return (w @ v if voters else np.zeros(len(VOTE_CLASSES))), voters
    v = db.votes(list(up), organ, shared) if len(up) else np.zeros((0, len(VOTE_CLASSES)))
    spec, ok = facts if facts is not None else _gene_facts(up, db, config)
    keep = np.flatnonzero(ok & (v.sum(1) > 0))[:config.top_n]
    if not len(keep):
        return np.zeros(len(VOTE_CLASSES)), []
    if config.effect_weights and up_z is not None:
        # the strongest voter weighs what rank 1 weighs (N - 1); the others by their z against it
        w = (config.top_n - 1) * np.clip(up_z[keep] / up_z[keep[0]], 0, 1)
    else:
        w = rank_weights(config.top_n, config.rank_weighting)[:len(keep)]
    s = (w * spec[keep]) @ v[keep]
    # specificity shares the votes between classes; the evidence held against tau_vote stays the
    # voters' weights, as in the paper
    total = float(w @ v[keep].sum(1))
    return (s * (total / s.sum()) if s.sum() > 0 else s), [str(g) for g in up[keep]]


def cancer_enrichment(top_m: list[str], panel: list[str], cancer: frozenset[str]) -> tuple[float, float]:
    """(overlap ratio, p) of the ``cancer`` genes among the ranked genes ``top_m`` against their
    share of the whole panel. p is a minimum-hypergeometric test: the smallest one-sided p over
    the prefixes top-1 .. top-m (P(X >= hits) drawing m genes from the panel), Bonferroni-corrected
    for the prefixes it can be attained at (those ending with a cancer gene): three cancer genes
    at the top of a cluster's list count, even if weakly up-regulated genes follow."""
    if not top_m:
        return 0.0, 1.0
    is_c = np.array([str(g).upper() in cancer for g in top_m])
    K = sum(str(g).upper() in cancer for g in panel)
    m = np.arange(1, len(top_m) + 1)
    hits = np.cumsum(is_c)
    p = hypergeom.sf(hits - 1, len(panel), K, m)
    p = np.where(hits > 0, p, 1.0)
    return float(is_c.mean()), float(min(1.0, p.min() * max(1, int(is_c.sum()))))


def classify_clusters_improved(z: np.ndarray, genes, organ: str | None, db, config: LabelConfig,
                               moments=None) -> pd.DataFrame:
    """The improved method (see the module docstring): the same table as :func:`classify_clusters`
    plus ``cancer_p``, the enrichment's p-value, and ``tumour_share``, the share of the panel's
    tumour genes it up-regulates (NaN for a panel without any), from the z-scores (clusters x genes) and, for the
    contrast within the epithelium, the clusters' expression moments (``degs.ClusterMoments``)."""
    genes = np.asarray(genes, dtype=object)
    panel = list(map(str, genes))
    rows, ups = [], []
    for k in range(z.shape[0]):
        if config.up_markers:
            up, up_z = _up_genes(z[k], genes, config.min_z, with_z=True)
        else:
            up, up_z = genes[np.argsort(-z[k], kind="stable")], None
        fallback = False
        facts = _gene_facts(up, db, config) if config.up_markers else None
        s, voters = (_vote(up, organ, db, config, config.shared_lineages, up_z, facts) if organ
                     else (np.zeros(len(VOTE_CLASSES)), []))
        if s.sum() < config.tau_vote:
            fallback = organ is not None
            s, voters = _vote(up, None, db, config, False, up_z, facts)
        cls = UNKNOWN if s.sum() < config.tau_vote else VOTE_CLASSES[int(np.argmax(s))]
        ups.append(up)
        rows.append({"cluster": k, "label": cls, **dict(zip(VOTE_COLUMNS, s.astype(float))),
                     "votes_total": float(s.sum()), "fallback": fallback, "top_genes": ",".join(voters)})
    epi = np.array([r["label"] == EPITHELIAL for r in rows])
    beyond = db.cancer_genes_beyond_lineage(organ) if config.cancer_test else frozenset()
    tests = [cancer_enrichment([str(g) for g in up[:config.top_m]], panel, beyond) for up in ups]
    # least cancer-like: fewest cancer genes beyond the lineage, then fewest of the whole set
    rank = [(t[0], float(db.cancer_overlap([str(g) for g in up[:config.top_m]]))) for t, up in zip(tests, ups)]
    within = _within_epithelium(epi, rank, genes, panel, db, config, moments) if config.cancer_test else {}
    share = _tumour_share(z, panel, organ, db, config)
    for k, r in enumerate(rows):
        top_m = [str(g) for g in ups[k][:config.top_m]]
        if not config.cancer_test:
            overlap, p = float(db.cancer_overlap(top_m)), float("nan")
            neo = overlap > config.tau_cancer
        else:
            overlap, p = tests[k]
            p = min(p, within.get(k, 1.0))
            neo = p < config.cancer_alpha
        neo = neo or (config.tumour_coverage and share[k] >= config.min_tumour_share)
        if config.hierarchy and r["label"] == EPITHELIAL and neo:
            r["label"] = NEOPLASTIC
        r["cancer_overlap"], r["cancer_p"], r["tumour_share"] = overlap, p, float(share[k])
    cols = ["cluster", "label", *VOTE_COLUMNS, "votes_total", "fallback", "cancer_overlap", "cancer_p",
            "tumour_share", "top_genes"]
    return pd.DataFrame(rows)[cols]


def _tumour_share(z: np.ndarray, panel: list[str], organ: str | None, db, config: LabelConfig) -> np.ndarray:
    """Per cluster, the share of the panel's tumour genes (``MarkerDB.tumour_genes``) it
    up-regulates (z >= min_z); NaN where the panel has none. A 20-gene breast panel carries two
    (ERBB2, CEACAM6): a carcinoma cluster up-regulates both, normal epithelium neither, and no
    enrichment test over 20 genes can say so at p < 0.05."""
    states = state_genes() if config.skip_state_genes else frozenset()
    tumour = db.tumour_genes(organ, states)
    if not config.lineage_filter:
        tumour = (db.cancer_genes_beyond_lineage(organ) - states)
    cols = np.flatnonzero([g.upper() in tumour for g in panel])
    if not len(cols):
        return np.full(z.shape[0], np.nan)
    return (z[:, cols] >= config.min_z).mean(1)


def _within_epithelium(epi: np.ndarray, overlap, genes, panel, db, config: LabelConfig, moments) -> dict[int, float]:
    """Cancer-gene p-values of epithelial clusters against the slide's normal-looking epithelium.

    The reference is the epithelial cluster(s) least cancer-like by ``overlap`` (per cluster, a
    tuple compared in order: the overlap of its top-M up-regulated genes with the cancer genes
    beyond the lineage, then with the whole set); every other epithelial cluster is contrasted
    with the pooled reference (Welch t from the cluster moments), counting the cancer genes of
    epithelium (``lineage_filter``) or the whole set. What is left is tumour against normal epithelium: the genes a carcinoma
    gains over its tissue (ERBB2, GRB7 ...), not the lineage it shares with it. (Growing the
    reference with the clusters that pass as normal lets a weak tumour cluster in, and then the
    whole tumour.) A slide with no normal epithelium compares tumour with tumour and adds nothing
    to the test against all cells."""
    idx = np.flatnonzero(epi)
    if not config.cancer_within_epithelium or moments is None or len(idx) < 2:
        return {}
    cancer = db.cancer_genes_of_epithelium() if config.lineage_filter else db.cancer_genes
    least = min(overlap[k] for k in idx)
    ref = np.array([k for k in idx if overlap[k] == least])
    out: dict[int, float] = {}
    for k in idx:
        if k in ref:
            continue
        t = group_contrast(moments, k, ref)
        up = [str(g) for g in _up_genes(t, genes, config.min_z)[:config.top_m]]
        out[int(k)] = cancer_enrichment(up, panel, cancer)[1]
    return out


def label_clusters(z: np.ndarray, genes, organ: str | None, db, config: LabelConfig, moments=None) -> pd.DataFrame:
    """One row per cluster by the configured method (``paper`` or ``improved``)."""
    if config.method == "paper":
        from stx_platform.labels.degs import top_genes

        return classify_clusters(top_genes(z, genes, max(config.top_n, config.top_m)), organ, db, config)
    return classify_clusters_improved(z, genes, organ, db, config, moments)
