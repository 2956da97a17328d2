"""Reference-free baselines that label cells from the same marker database as the paper's method.

Every baseline is a pure function ``fn(adata, signatures, **params) -> BaselineResult``:

* ``adata``: cells x genes AnnData of raw counts (``adata.X`` scipy sparse or dense, int or float,
  ``var_names`` = gene symbols);
* ``signatures``: ``{class: [gene, ...]}`` with keys among :data:`SCORED_CLASSES` (a missing key is
  an empty list). Genes absent from ``adata.var_names`` are ignored (repeats count once); a class
  left with no present gene gets an all-NaN score column and is never chosen.

The result holds one label per cell (adata order) and a cells x classes score frame indexed by
``adata.obs_names`` with the columns in :data:`SCORED_CLASSES` order.

Unknown rule, the same for every method (:func:`decide`). A cell is ``Unknown`` when

1. its total count (over all genes) is zero -- its score row is NaN;
2. no class has a present signature gene;
3. it has no count in any present signature gene (no marker evidence at all);
4. its best score is not informative: not above the method's floor (TopDown: > 0, i.e. above the
   control genes; UCell, AUCell: > 0; CellAssign: any posterior), or shared by two or more classes
   (an exact tie, e.g. all scores equal);

otherwise it gets the argmax class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import digamma, gammaln, polygamma

from stx_platform.taxonomy import SCORED_CLASSES, UNKNOWN

__all__ = ["BASELINES", "BaselineResult", "aucell", "cellassign", "decide", "topdown", "ucell"]

_TIE_RTOL = 1e-12


@dataclass
class BaselineResult:
    """One baseline's output: ``labels`` (str, one of SCORED_CLASSES or Unknown per cell, adata
    order), ``scores`` (cells x SCORED_CLASSES, indexed by obs_names) and ``info`` (method
    details, e.g. CellAssign's iterations and fitted parameters)."""

    labels: np.ndarray
    scores: pd.DataFrame
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# shared helpers


def _counts(adata) -> sparse.csr_matrix:
    X = adata.X
    X = X.tocsr() if sparse.issparse(X) else sparse.csr_matrix(np.asarray(X))
    if X.nnz and X.data.min() < 0:
        raise ValueError("baselines need raw counts: adata.X has negative values")
    return X


def _gene_indices(adata, signatures: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Column indices of each class's present signature genes (first occurrence of a symbol,
    signature order, repeats dropped); SCORED_CLASSES order, empty arrays for missing keys."""
    unknown = set(signatures) - set(SCORED_CLASSES)
    if unknown:
        raise ValueError(f"signature classes {sorted(unknown)} are not among {SCORED_CLASSES}")
    pos: dict[str, int] = {}
    for i, g in enumerate(map(str, adata.var_names)):
        pos.setdefault(g, i)
    out = {}
    for c in SCORED_CLASSES:
        genes = signatures.get(c, []) or []
        if isinstance(genes, str):
            raise TypeError(f"signature of {c} must be a list of gene symbols, not a string")
        idx = [pos[g] for g in dict.fromkeys(map(str, genes)) if g in pos]
        out[c] = np.asarray(idx, dtype=np.int64)
    return out


def _evidence(X: sparse.csr_matrix, idx: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(zero total count, no count in any present signature gene) per cell."""
    zero = np.asarray(X.sum(axis=1)).ravel() == 0
    union = np.unique(np.concatenate([v for v in idx.values()] + [np.zeros(0, np.int64)]))
    if union.size == 0:
        return zero, np.ones(X.shape[0], bool)
    sub = X[:, union]
    hit = np.asarray((sub > 0).sum(axis=1)).ravel() > 0
    return zero, ~hit


def decide(scores: np.ndarray, zero: np.ndarray, no_evidence: np.ndarray, floor: float | None = 0.0) -> np.ndarray:
    """Labels from a cells x SCORED_CLASSES score matrix (NaN = class not scored) by the module's
    Unknown rule: Unknown if ``zero`` (no counts), ``no_evidence`` (no signature gene counted),
    no scored class, best score ``<= floor`` (``floor=None``: no floor) or the best score tied
    (within 1e-12 relative) with another class; otherwise the argmax class."""
    s = np.where(np.isfinite(scores), scores, -np.inf)
    n, c = s.shape
    labels = np.full(n, UNKNOWN, dtype=object)
    if c == 0 or n == 0:
        return labels.astype(str)
    order = np.argsort(-s, axis=1, kind="stable")
    best = np.take_along_axis(s, order[:, :1], axis=1)[:, 0]
    second = np.take_along_axis(s, order[:, 1:2], axis=1)[:, 0] if c > 1 else np.full(n, -np.inf)
    tol = _TIE_RTOL * np.maximum(1.0, np.abs(np.where(np.isfinite(best), best, 0.0)))
    tie = np.isfinite(second) & (second >= best - tol)
    ok = np.isfinite(best) & ~tie & ~zero & ~no_evidence
    if floor is not None:
        ok &= best > floor
    labels[ok] = np.asarray(SCORED_CLASSES, dtype=object)[order[ok, 0]]
    return labels.astype(str)


def _result(adata, scores: np.ndarray, zero, no_evidence, floor, info=None) -> BaselineResult:
    scores = np.asarray(scores, dtype=np.float64)
    scores[zero] = np.nan
    labels = decide(scores, zero, no_evidence, floor)
    frame = pd.DataFrame(scores, index=adata.obs_names.copy(), columns=list(SCORED_CLASSES))
    return BaselineResult(labels=labels, scores=frame, info=info or {})


def _chunks(n: int, size: int):
    size = max(1, int(size))
    for start in range(0, n, size):
        yield start, min(n, start + size)


# ---------------------------------------------------------------------------------------------
# TopDown: Tirosh / Seurat module score


def topdown(adata, signatures, ctrl_size: int = 50, n_bins: int = 25, seed: int = 0) -> BaselineResult:
    """Gene-set module score (Tirosh et al. 2016, Science 352:189; Seurat's AddModuleScore) per class,
    via :func:`scanpy.tl.score_genes` on a ``normalize_total`` + ``log1p`` copy: the mean expression
    of the class's present genes minus the mean of ``ctrl_size`` control genes drawn per
    expression bin (``n_bins`` bins of mean expression, ``random_state=seed``). Argmax over classes;
    Unknown when the best score is not > 0 (not above its controls) or per :func:`decide`. A class
    whose genes leave no control gene in any bin gets NaN. NumPy's global random state, which
    score_genes reseeds, is restored afterwards."""
    import anndata as ad
    import scanpy as sc

    X = _counts(adata)
    idx = _gene_indices(adata, signatures)
    zero, no_ev = _evidence(X, idx)
    work = ad.AnnData(X=X.astype(np.float32), obs=pd.DataFrame(index=np.arange(X.shape[0]).astype(str)),
                      var=pd.DataFrame(index=pd.Index(adata.var_names).astype(str)))
    work.var_names_make_unique()
    with warnings.catch_warnings():  # zero-count cells are expected; they end up Unknown
        warnings.filterwarnings("ignore", message="Some cells have zero counts")
        sc.pp.normalize_total(work)
    sc.pp.log1p(work)
    names = work.var_names
    scores = np.full((X.shape[0], len(SCORED_CLASSES)), np.nan)
    state = np.random.get_state()
    try:
        for j, c in enumerate(SCORED_CLASSES):
            if idx[c].size == 0:
                continue
            try:
                sc.tl.score_genes(work, list(names[idx[c]]), ctrl_size=ctrl_size, n_bins=n_bins,
                                  random_state=seed, score_name="_score", use_raw=False)
            except RuntimeError:  # no control gene in any expression bin
                continue
            scores[:, j] = work.obs["_score"].to_numpy(dtype=np.float64)
    finally:
        np.random.set_state(state)
    return _result(adata, scores, zero, no_ev, floor=0.0)


# ---------------------------------------------------------------------------------------------
# UCell


def _avg_desc_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of each row's values in decreasing order, ties given their average rank."""
    n, g = x.shape
    order = np.argsort(-x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    pos = np.broadcast_to(np.arange(g, dtype=np.int32), (n, g))
    new = np.ones((n, g), bool)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
    last = np.ones((n, g), bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, pos, g)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, g), np.float32)
    np.put_along_axis(ranks, order, ((start + end) / 2.0 + 1.0).astype(np.float32), axis=1)
    return ranks


def ucell(adata, signatures, max_rank: int = 1500, chunk_size: int = 20_000) -> BaselineResult:
    """UCell score (Andreatta & Carmona 2021, Comput Struct Biotechnol J 19:3796), a Mann-Whitney U
    statistic of each signature's ranks within the cell.

    Per cell, genes are ranked by decreasing count (rank 1 = highest; ties get their average rank,
    as UCell's ``frank(ties.method="average")``); with ``R = min(max_rank, n_genes)``, genes with
    zero count and ranks above ``R`` are set to ``R``. For a class with ``n`` present genes of ranks
    ``r_i``: ``U = 1 - (sum_i r_i - n(n+1)/2) / (n R - n(n+1)/2)``, the normalisation pyucell (0.8)
    uses, so U is exactly 1 when the signature holds the top n ranks and 0 when none of its genes is
    expressed (UCell's R package divides by ``n R`` instead and clips at 0). Absent genes are skipped
    (pyucell ``missing_genes="skip"``; its default imputes them at rank ``R``). Unknown when the
    best U is not > 0 or per :func:`decide`. Rows are ranked in dense float32 blocks of
    ``chunk_size`` cells."""
    X = _counts(adata)
    idx = _gene_indices(adata, signatures)
    zero, no_ev = _evidence(X, idx)
    n_cells, n_genes = X.shape
    R = float(min(int(max_rank), n_genes))
    scores = np.full((n_cells, len(SCORED_CLASSES)), np.nan)
    for start, stop in _chunks(n_cells, chunk_size):
        x = X[start:stop].toarray().astype(np.float32, copy=False)
        ranks = _avg_desc_ranks(x)
        ranks[x <= 0] = R
        np.minimum(ranks, R, out=ranks)
        for j, c in enumerate(SCORED_CLASSES):
            n = idx[c].size
            den = n * R - n * (n + 1) / 2.0
            if n == 0 or den <= 0:
                continue
            total = ranks[:, idx[c]].sum(axis=1, dtype=np.float64)
            scores[start:stop, j] = 1.0 - (total - n * (n + 1) / 2.0) / den
    return _result(adata, scores, zero, no_ev, floor=0.0, info={"max_rank": int(R)})


# ---------------------------------------------------------------------------------------------
# AUCell


def aucell(adata, signatures, top_frac: float = 0.05, seed: int = 0, chunk_size: int = 20_000) -> BaselineResult:
    """AUCell score (Aibar et al. 2017, Nat Methods 14:1083): the area under the recovery curve of a
    signature among each cell's top-ranked genes, normalised by its maximum.

    Per cell, genes are ranked by decreasing count (ordinal ranks 1..G; ties, zeros included,
    broken uniformly at random as AUCell does, by a generator seeded with ``seed`` and consumed in
    cell order, so a result does not depend on ``chunk_size``). With
    ``n_up = ceil(top_frac * G)`` (AUCell's ``aucMaxRank``; decoupler 2.x alike) the recovery curve
    counts the signature genes within the top x ranks, and its area over ``[1, n_up)`` is
    ``AUC = sum_{i: r_i < n_up} (n_up - r_i)``, divided by the largest possible value for the
    class's ``k`` present genes, ``sum_{r=1}^{min(k, n_up-1)} (n_up - r)`` (AUCell's
    ``normAUC``). ``n_up = 1`` leaves no area (scores NaN). Unknown when the best AUC is not > 0 or
    per :func:`decide`."""
    X = _counts(adata)
    idx = _gene_indices(adata, signatures)
    zero, no_ev = _evidence(X, idx)
    n_cells, n_genes = X.shape
    n_up = int(min(n_genes, max(1, math.ceil(top_frac * n_genes))))
    max_auc = {c: float(sum(n_up - r for r in range(1, min(idx[c].size, n_up - 1) + 1))) for c in SCORED_CLASSES}
    rng = np.random.default_rng(seed)
    scores = np.full((n_cells, len(SCORED_CLASSES)), np.nan)
    for start, stop in _chunks(n_cells, chunk_size):
        x = X[start:stop].toarray().astype(np.float32, copy=False)
        perm = np.argsort(rng.random(x.shape), axis=1)  # random order in which ties are broken
        o = np.argsort(-np.take_along_axis(x, perm, axis=1), axis=1, kind="stable")
        order = np.take_along_axis(perm, o, axis=1)
        ranks = np.empty(x.shape, np.int32)
        np.put_along_axis(ranks, order, np.broadcast_to(np.arange(1, n_genes + 1, dtype=np.int32), x.shape), axis=1)
        gain = np.maximum(n_up - ranks, 0).astype(np.float64)
        for j, c in enumerate(SCORED_CLASSES):
            if idx[c].size == 0 or max_auc[c] <= 0:
                continue
            scores[start:stop, j] = gain[:, idx[c]].sum(axis=1) / max_auc[c]
    return _result(adata, scores, zero, no_ev, floor=0.0, info={"n_up": n_up})


# ---------------------------------------------------------------------------------------------
# CellAssign


def _softplus(t):
    return np.logaddexp(0.0, t)


class _CellAssignModel:
    """CellAssign's likelihood on marker genes with sufficient statistics.

    y_ng | class c ~ NB(mean mu_ngc = s_n exp(beta_g + delta_gc rho_gc), inverse dispersion
    theta_g), delta_gc = exp(ldelta_gc) for each marker pair (g, c). Per entry, with
    t = log(mu/theta): log NB = lgamma(y+theta) - lgamma(theta) - lgamma(y+1) + y log p + theta log q,
    p = sigmoid(t), q = 1 - p. Entries with y = 0 contribute theta log q, which depends on the cell
    only through s_n: these are summed on a grid of the distinct size factors (U of them, few for
    integer library sizes) x "variants" (v < G: gene g at its base mean; v = G + j: marker pair j at
    its over-expressed mean). Non-zero entries add y log p (gathered from the same grid) and the
    lgamma terms (tabulated per distinct (gene, count)). No transcendental function is evaluated
    per cell, so an EM iteration costs a few gathers and bincounts over the non-zeros.
    """

    def __init__(self, Y: sparse.csr_matrix, s: np.ndarray, g_pair: np.ndarray, c_pair: np.ndarray, n_classes: int):
        self.N, self.G = Y.shape
        self.C = n_classes
        self.g_pair = g_pair.astype(np.int64)
        self.c_pair = c_pair.astype(np.int64)
        self.M = g_pair.size
        self.V = self.G + self.M
        su, u = np.unique(s, return_inverse=True)
        self.log_su = np.log(su)
        self.U = su.size
        self.u = u.astype(np.int64)
        self.cnt = np.bincount(self.u, minlength=self.U).astype(np.float64)
        coo = Y.tocoo()
        keep = coo.data != 0
        self.rows = coo.row[keep].astype(np.int64)
        self.cols = coo.col[keep].astype(np.int64)
        self.y = coo.data[keep].astype(np.float64)
        # non-zeros of each pair's gene: the "expanded" entries
        order = np.argsort(self.cols, kind="stable")
        ptr = np.concatenate([[0], np.cumsum(np.bincount(self.cols, minlength=self.G))])
        parts = [order[ptr[g]:ptr[g + 1]] for g in self.g_pair]
        self.e_nz = np.concatenate(parts + [np.zeros(0, np.int64)]).astype(np.int64)
        self.e_pair = np.repeat(np.arange(self.M), [p.size for p in parts]).astype(np.int64)
        self.e_rows = self.rows[self.e_nz]
        self.e_y = self.y[self.e_nz]
        ur, ue = self.u[self.rows], self.u[self.e_rows]
        self.key_base = ur * self.V + self.cols
        self.key_pair = ue * self.V + self.G + self.e_pair
        self.key_pair_base = ue * self.V + self.g_pair[self.e_pair]
        # (gene, count) table for the lgamma / digamma terms
        uy, yi = np.unique(self.y, return_inverse=True)
        uk, kinv = np.unique(self.cols * uy.size + yi, return_inverse=True)
        self.k_gene = uk // uy.size
        self.k_y = uy[uk % uy.size]
        self.k_cnt = np.bincount(kinv, minlength=uk.size).astype(np.float64)
        self.k_inv = kinv
        # variants: gene and class indicator A[v, c] (1 where class c uses variant v for its gene)
        self.v_gene = np.concatenate([np.arange(self.G), self.g_pair])
        A = np.ones((self.G, self.C))
        A[self.g_pair, self.c_pair] = 0.0
        P = np.zeros((self.M, self.C))
        P[np.arange(self.M), self.c_pair] = 1.0
        self.A = np.vstack([A, P])

    # -- grid ------------------------------------------------------------------------------
    def grid(self, beta, ldelta, ltheta):
        off = np.concatenate([np.zeros(self.G), np.exp(ldelta)])
        col = beta[self.v_gene] + off - ltheta[self.v_gene]
        t = self.log_su[:, None] + col[None, :]
        sp = _softplus(t)
        logq = -sp
        logp = t - sp
        return {"theta_v": np.exp(ltheta)[self.v_gene], "logp": logp, "logq": logq,
                "p": np.exp(logp), "q": np.exp(logq)}

    def lgamma_table(self, ltheta):
        th = np.exp(ltheta)[self.k_gene]
        return gammaln(self.k_y + th) - gammaln(th) - gammaln(self.k_y + 1.0)

    # -- E step ----------------------------------------------------------------------------
    def loglik(self, beta, ldelta, ltheta):
        """Per-cell, per-class log-likelihood ll[n, c] = sum_g log NB(y_ng; mu_ngc, theta_g)."""
        gr = self.grid(beta, ldelta, ltheta)
        logp = gr["logp"].ravel()
        zero_part = (gr["theta_v"][None, :] * gr["logq"]) @ self.A  # U x C
        base = np.bincount(self.rows, self.y * logp[self.key_base], minlength=self.N)
        base += np.bincount(self.rows, self.lgamma_table(ltheta)[self.k_inv], minlength=self.N)
        diff = self.e_y * (logp[self.key_pair] - logp[self.key_pair_base])
        extra = np.bincount(self.e_rows * self.C + self.c_pair[self.e_pair], diff, minlength=self.N * self.C)
        return zero_part[self.u] + base[:, None] + extra.reshape(self.N, self.C)

    # -- M step ----------------------------------------------------------------------------
    def weights(self, gamma):
        """Sufficient statistics of the responsibilities: W[u, v] (cells of size factor u, weighted
        by the probability that their class uses variant v) and YW[u, v] (the same, times y, over
        the non-zero entries)."""
        Gam = np.stack([np.bincount(self.u, gamma[:, c], minlength=self.U) for c in range(self.C)], axis=1)
        W = Gam @ self.A.T
        w_pair = gamma[self.e_rows, self.c_pair[self.e_pair]]
        w_base = 1.0 - np.bincount(self.e_nz, w_pair, minlength=self.y.size)
        YW = np.bincount(self.key_base, w_base * self.y, minlength=self.U * self.V)
        YW += np.bincount(self.key_pair, w_pair * self.e_y, minlength=self.U * self.V)
        return W, YW.reshape(self.U, self.V)

    def q_value(self, W, YW, beta, ldelta, ltheta):
        """Expected complete-data log-likelihood (without the log pi term)."""
        gr = self.grid(beta, ldelta, ltheta)
        return float(np.sum(W * gr["theta_v"] * gr["logq"]) + np.sum(YW * gr["logp"])
                     + np.dot(self.k_cnt, self.lgamma_table(ltheta)))

    def derivatives(self, W, YW, beta, ldelta, ltheta):
        """Scores and Fisher informations of Q: per variant S (d/d eta), F (Fisher weight), and per
        gene the first and second derivatives in log theta."""
        gr = self.grid(beta, ldelta, ltheta)
        th, p, q, logq = gr["theta_v"], gr["p"], gr["q"], gr["logq"]
        S = np.sum(-W * th * p + YW * q, axis=0)
        F = np.sum(W * th * p, axis=0)
        g_th = np.sum(W * (logq + p) - YW * q / th, axis=0)
        h_th = np.sum(W * p * p / th + YW * q * q / th ** 2, axis=0)
        theta = np.exp(ltheta)
        tk = theta[self.k_gene]
        dg = self.k_cnt * (digamma(self.k_y + tk) - digamma(tk))
        tg = self.k_cnt * (polygamma(1, self.k_y + tk) - polygamma(1, tk))
        g_theta = np.bincount(self.v_gene, g_th, minlength=self.G) + np.bincount(self.k_gene, dg, minlength=self.G)
        h_theta = np.bincount(self.v_gene, h_th, minlength=self.G) + np.bincount(self.k_gene, tg, minlength=self.G)
        return S, F, theta * g_theta, theta ** 2 * h_theta + theta * g_theta

    def gradient(self, gamma, beta, ldelta, ltheta):
        """Gradient of Q in (beta, ldelta, ltheta) -- used to check the derivation."""
        W, YW = self.weights(gamma)
        S, _, g_u, _ = self.derivatives(W, YW, beta, ldelta, ltheta)
        g_beta = np.bincount(self.v_gene, S, minlength=self.G)
        return g_beta, np.exp(ldelta) * S[self.G:], g_u

    def m_step(self, gamma, beta, ldelta, ltheta, lb, max_steps=25, rtol=1e-10):
        """Maximise Q by Fisher scoring in (beta, ldelta) and Newton in log theta, with the lower
        bound ldelta >= lb (active set) and step halving so that Q never decreases."""
        W, YW = self.weights(gamma)
        Q = self.q_value(W, YW, beta, ldelta, ltheta)
        G = self.G
        for _ in range(max_steps):
            S, F, g_u, h_u = self.derivatives(W, YW, beta, ldelta, ltheta)
            Sb, Fb, Sp, Fp = S[:G], F[:G], S[G:], F[G:]
            ok_b, ok_p = Fb > 1e-10, Fp > 1e-10
            d_beta = np.where(ok_b, Sb / np.where(ok_b, Fb, 1.0), 0.0)
            fold = np.where(ok_p, Sp / np.where(ok_p, Fp, 1.0), 0.0)  # step of beta + delta
            delta = np.exp(ldelta)
            d_ld = np.where(ok_p, (fold - d_beta[self.g_pair]) / delta, 0.0)
            active = (ldelta <= lb + 1e-12) & (d_ld < 0)
            if active.any():  # delta fixed at its bound: beta also fits that class's cells
                nb = np.bincount(self.g_pair[active], Sp[active], minlength=G)
                db = np.bincount(self.g_pair[active], Fp[active], minlength=G)
                den = Fb + db
                d_beta = np.where(den > 1e-10, (Sb + nb) / np.where(den > 1e-10, den, 1.0), 0.0)
                d_ld = np.where(ok_p & ~active, (fold - d_beta[self.g_pair]) / delta, 0.0)
            d_lt = np.where(h_u < 0, -g_u / np.where(h_u < 0, h_u, -1.0), np.sign(g_u))
            d_beta, d_ld, d_lt = (np.clip(d, -1.0, 1.0) for d in (d_beta, d_ld, d_lt))
            step, improved = 1.0, False
            for _ in range(30):
                nb_, nl_ = beta + step * d_beta, np.maximum(ldelta + step * d_ld, lb)
                nt_ = np.clip(ltheta + step * d_lt, -8.0, 15.0)
                Qn = self.q_value(W, YW, nb_, nl_, nt_)
                if Qn >= Q:
                    improved = True
                    break
                step *= 0.5
            if not improved:
                break
            gain = Qn - Q
            beta, ldelta, ltheta, Q = nb_, nl_, nt_, Qn
            if gain <= rtol * abs(Q):
                break
        return beta, ldelta, ltheta


def cellassign(adata, signatures, max_iter: int = 200, tol: float = 1e-4, seed: int = 0,
               min_delta: float = 2.0) -> BaselineResult:
    """CellAssign (Zhang et al. 2019, Nat Methods 16:1007): a negative-binomial mixture over classes
    fitted by EM on the marker genes' raw counts; scores are the posterior class probabilities.

    Model: y_ng | class c ~ NB(mu_ngc, theta_g) with log mu_ngc = log s_n + beta_g0 +
    delta_gc rho_gc, where rho (genes x classes) is 1 where a present gene is a class's marker,
    delta_gc = exp(ldelta_gc) >= ``min_delta`` (CellAssign's constraint, default 2), s_n = library
    size over all genes / its mean, and class proportions pi. E-step: responsibilities gamma_nc.
    M-step: pi = mean gamma; (beta, ldelta) by Fisher scoring and log theta by Newton, iterated to
    convergence with step halving, so the log-likelihood never decreases (a true EM). Stops when
    the log-likelihood's relative change is below ``tol`` or after ``max_iter`` iterations.
    Initialisation (seeded by ``seed``): ldelta ~ U(-2, 2) clipped to log(min_delta) (as
    CellAssign), pi uniform, theta_g = 1 and beta_g such that the model's mean matches the gene's
    pooled rate, ``exp(beta_g) (1 + sum_c rho_gc (exp(delta_gc) - 1) / C) = sum_n y_ng / sum_n s_n``;
    deterministic for a given seed.

    Simplifications versus the published model: one inverse dispersion per gene instead of
    CellAssign's basis-function dispersion depending on the mean; no covariates (design matrix is
    the intercept); no hierarchical (shrinkage) prior on log delta and no Dirichlet prior on pi
    (as ``shrinkage=FALSE``); exact full-batch EM with Fisher-scoring M-steps instead of Adam.
    Only classes with a present marker take part; genes that mark every such class, or have no
    count, are dropped (they do not inform the class). Cells with zero counts are not fitted
    (NaN scores). Unknown per :func:`decide` (no marker evidence, or tied posteriors).
    """
    X = _counts(adata)
    idx = _gene_indices(adata, signatures)
    zero, no_ev = _evidence(X, idx)
    n_cells = X.shape[0]
    scores = np.full((n_cells, len(SCORED_CLASSES)), np.nan)
    classes = [j for j, c in enumerate(SCORED_CLASSES) if idx[SCORED_CLASSES[j]].size]
    info: dict = {"n_iter": 0, "converged": False, "classes": [SCORED_CLASSES[j] for j in classes]}
    ok = ~zero
    if not classes or not ok.any():
        return _result(adata, scores, zero, no_ev, floor=None, info=info)
    C = len(classes)
    genes = np.unique(np.concatenate([idx[SCORED_CLASSES[j]] for j in classes]))
    rho = np.zeros((genes.size, C), bool)
    for k, j in enumerate(classes):
        rho[np.searchsorted(genes, idx[SCORED_CLASSES[j]]), k] = True
    Xok = X[ok]
    lib = np.asarray(Xok.sum(axis=1), dtype=np.float64).ravel()
    s = lib / lib.mean()
    Y = Xok[:, genes].astype(np.float64)
    gene_tot = np.asarray(Y.sum(axis=0)).ravel()
    keep = (rho.sum(axis=1) < C) & (gene_tot > 0)
    info["genes"] = [str(g) for g in np.asarray(adata.var_names)[genes[keep]]]
    if C == 1 or not keep.any():
        gamma = np.full((Xok.shape[0], C), 1.0 / C)
        scores[np.ix_(np.flatnonzero(ok), classes)] = gamma
        return _result(adata, scores, zero, no_ev, floor=None, info=info)
    Y, rho, gene_tot = Y[:, keep].tocsr(), rho[keep], gene_tot[keep]
    g_pair, c_pair = np.nonzero(rho)
    model = _CellAssignModel(Y, s, g_pair, c_pair, C)

    rng = np.random.default_rng(seed)
    lb = math.log(min_delta) if min_delta > 0 else -np.inf
    ldelta = np.maximum(rng.uniform(-2.0, 2.0, size=g_pair.size), lb)
    # beta_g: the pooled rate divided by the mean fold under the initial delta and uniform pi
    fold = np.bincount(g_pair, np.exp(np.exp(ldelta)) - 1.0, minlength=Y.shape[1]) / C
    beta = np.log(gene_tot / s.sum()) - np.log1p(fold)
    ltheta = np.zeros(Y.shape[1])
    log_pi = np.full(C, -math.log(C))
    prev = -np.inf
    trace = []
    for it in range(1, max_iter + 1):
        ll = model.loglik(beta, ldelta, ltheta) + log_pi[None, :]
        mx = ll.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(ll - mx).sum(axis=1))
        gamma = np.exp(ll - lse[:, None])
        L = float(lse.sum())
        trace.append(L)
        info["n_iter"] = it
        if np.isfinite(prev) and abs(L - prev) <= tol * abs(prev):
            info["converged"] = True
            break
        prev = L
        pi = np.maximum(gamma.mean(axis=0), 1e-12)
        log_pi = np.log(pi / pi.sum())
        beta, ldelta, ltheta = model.m_step(gamma, beta, ldelta, ltheta, lb)
    scores[np.ix_(np.flatnonzero(ok), classes)] = gamma
    info.update(loglik=trace, pi=dict(zip(info["classes"], np.exp(log_pi).tolist())),
                beta=beta, delta=pd.DataFrame({"gene": np.asarray(info["genes"])[g_pair],
                                               "class": np.asarray(info["classes"])[c_pair],
                                               "delta": np.exp(ldelta)}),
                theta=np.exp(ltheta))
    return _result(adata, scores, zero, no_ev, floor=None, info=info)


#: The baselines by the names the paper's tables use.
BASELINES: dict[str, Callable[..., BaselineResult]] = {
    "TopDown": topdown,
    "UCell": ucell,
    "AUCell": aucell,
    "CellAssign": cellassign,
}
