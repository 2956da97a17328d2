"""Baselines (TopDown, UCell, AUCell, CellAssign): worked examples checked by hand, the Unknown
rule, and recovery of planted classes on simulated counts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from stx_platform.labels.baselines import (
    BASELINES,
    BaselineResult,
    _CellAssignModel,
    aucell,
    cellassign,
    decide,
    topdown,
    ucell,
)
from stx_platform.taxonomy import CONNECTIVE, EPITHELIAL, INFLAMMATORY, NEOPLASTIC, SCORED_CLASSES, UNKNOWN

N, E, I, C = NEOPLASTIC, EPITHELIAL, INFLAMMATORY, CONNECTIVE

# The worked example: 6 cells x 7 genes.
TOY = np.array([
    [5, 3, 2, 0, 1, 0, 0],  # c0: no ties among expressed genes
    [0, 2, 0, 7, 0, 4, 0],  # c1
    [1, 1, 1, 1, 1, 1, 0],  # c2: every signature gene tied
    [0, 0, 0, 0, 0, 0, 0],  # c3: no counts
    [0, 0, 0, 0, 0, 0, 3],  # c4: counts only in a gene of no signature
    [4, 2, 2, 9, 0, 0, 0],  # c5: a tie (G2, G3) among expressed genes
])
TOY_SIG = {N: ["G1", "G2", "G1"], E: ["G4", "G6", "MISSING"], I: ["G3", "G5"], C: ["NOPE"]}


def toy(dense: bool = False, dtype=np.int64) -> ad.AnnData:
    X = TOY.astype(dtype)
    a = ad.AnnData(X if dense else sparse.csr_matrix(X))
    a.var_names = [f"G{i}" for i in range(1, 8)]
    a.obs_names = [f"c{i}" for i in range(TOY.shape[0])]
    return a


def simulate(n=2000, n_classes=4, per=10, other=60, seed=1, props=None):
    """NB counts: each class over-expresses its `per` markers by a log-fold in [1.5, 3]."""
    rng = np.random.default_rng(seed)
    G = n_classes * per + other
    z = rng.choice(n_classes, n, p=props)
    s = rng.lognormal(0.0, 0.4, n)
    beta = rng.normal(np.log(0.3), 0.5, G)
    theta = rng.uniform(2.0, 10.0, G)
    eta = np.log(s)[:, None] + beta[None, :]
    sig = {}
    for c in range(n_classes):
        genes = np.arange(c * per, (c + 1) * per)
        sig[SCORED_CLASSES[c]] = [f"g{i}" for i in genes]
        eta[np.ix_(z == c, genes)] += rng.uniform(1.5, 3.0, per)
    mu = np.exp(eta)
    y = rng.negative_binomial(theta[None, :], theta[None, :] / (theta[None, :] + mu))
    a = ad.AnnData(sparse.csr_matrix(y.astype(np.float32)))
    a.var_names = [f"g{i}" for i in range(G)]
    a.obs_names = [f"cell{i}" for i in range(n)]
    return a, sig, np.asarray(SCORED_CLASSES)[z]


@pytest.fixture(scope="module")
def sim():
    return simulate()


# ---------------------------------------------------------------------------------------------
# UCell by hand


def test_ucell_worked_example():
    # R = min(max_rank=1500, 7 genes) = 7; every present signature has n = 2 genes, so
    # U = 1 - (r1 + r2 - 3) / (2*7 - 3) = 1 - (r1 + r2 - 3) / 11. Zero counts rank R = 7.
    # c0 ranks: G1=1 G2=2 G3=3 G5=4, zeros 7 -> N: 1+2 -> 1; E: 7+7 -> 0; I: 3+4 -> 1 - 4/11 = 7/11
    # c1 ranks: G4=1 G6=2 G2=3        -> N: 7+3 -> 4/11; E: 1+2 -> 1; I: 7+7 -> 0
    # c2 ranks: G1..G6 tied at (1+6)/2 = 3.5, G7 = 7 -> every class 7 -> 1 - 4/11 = 7/11 (tie)
    # c4: signature genes all zero -> 0, 0, 0
    # c5 ranks: G4=1 G1=2 G2=G3=(3+4)/2=3.5 -> N: 2+3.5 -> 1 - 2.5/11 = 17/22;
    #     E: 1+7 -> 1 - 5/11 = 6/11; I: 3.5+7 -> 1 - 7.5/11 = 7/22
    expected = np.array([
        [1.0, 0.0, 7 / 11],
        [4 / 11, 1.0, 0.0],
        [7 / 11, 7 / 11, 7 / 11],
        [np.nan, np.nan, np.nan],
        [0.0, 0.0, 0.0],
        [17 / 22, 6 / 11, 7 / 22],
    ])
    for a in (toy(), toy(dense=True, dtype=np.float32)):
        r = ucell(a, TOY_SIG)
        assert list(r.scores.columns) == list(SCORED_CLASSES)
        np.testing.assert_allclose(r.scores[[N, E, I]].to_numpy(), expected, atol=1e-9, rtol=0)
        assert r.scores[C].isna().all()  # no present gene: NaN, never chosen
        assert r.labels.tolist() == [N, E, UNKNOWN, UNKNOWN, UNKNOWN, N]
        assert r.info["max_rank"] == 7


def test_ucell_max_rank_caps_ranks():
    # max_rank=2 -> R = 2: ranks above 2 and zeros become 2; U = 1 - (r1 + r2 - 3) / (4 - 3)
    # c0: G1=1 G2=2 -> N = 1; E: 2+2 -> 0; I: G3 (rank 3 -> 2) + G5 (4 -> 2) -> 0
    # c5: G4=1 G1=2 G2=G3=3.5 -> 2: N: 2+2 -> 0; E: 1+2 -> 1; I: 0   (the label flips to E)
    r = ucell(toy(), TOY_SIG, max_rank=2)
    np.testing.assert_allclose(r.scores.loc[["c0", "c5"], [N, E, I]].to_numpy(),
                               [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], atol=1e-9, rtol=0)
    assert r.labels[[0, 5]].tolist() == [N, E]


# ---------------------------------------------------------------------------------------------
# AUCell by hand


def test_aucell_worked_example():
    # top_frac=0.5 -> n_up = ceil(0.5 * 7) = 4; a gene of rank r < 4 adds 4 - r; a class of k = 2
    # present genes has max AUC (4-1) + (4-2) = 5.
    # c0 ranks: G1=1 G2=2 G3=3 G5=4 (zeros 5..7 in random order, adding 0)
    #     N: 3+2 = 5 -> 1; E: 0; I: G3 -> 1, G5 (rank 4) -> 0 -> 1/5
    # c1 ranks: G4=1 G6=2 G2=3 (zeros 4..7) -> N: 1/5; E: 3+2 -> 1; I: 0
    r = aucell(toy(), TOY_SIG, top_frac=0.5)
    assert r.info["n_up"] == 4
    np.testing.assert_allclose(r.scores.loc[["c0", "c1"], [N, E, I]].to_numpy(),
                               [[1.0, 0.0, 0.2], [0.2, 1.0, 0.0]], atol=1e-9, rtol=0)
    # c2: G1..G6 tied, ranked 1..6 at random -> the classes share 3 + 2 + 1 = 6 -> sum of AUCs 6/5
    assert r.scores.loc["c2", [N, E, I]].sum() == pytest.approx(1.2, abs=1e-9)
    # c5 ranks: G4=1 G1=2, G2/G3 at 3/4 at random -> E: 3/5; N + I: (2 + 1)/5 = 3/5
    assert r.scores.loc["c5", E] == pytest.approx(0.6, abs=1e-9)
    assert r.scores.loc["c5", [N, I]].sum() == pytest.approx(0.6, abs=1e-9)
    # c4: only random ties put signature genes in the top ranks -> no marker evidence, Unknown
    assert r.labels[[0, 1, 3, 4]].tolist() == [N, E, UNKNOWN, UNKNOWN]
    assert r.scores.loc["c3"].isna().all() and r.scores[C].isna().all()


def test_aucell_signature_longer_than_n_up():
    # k = 5 genes, n_up = 4: max AUC = 3 + 2 + 1 = 6; c0 holds ranks 1, 2, 3 (G1..G3) -> 6/6
    r = aucell(toy(), {N: ["G1", "G2", "G3", "G4", "G5"], E: ["G6"]}, top_frac=0.5)
    assert r.scores.loc["c0", N] == pytest.approx(1.0, abs=1e-9)
    # k = 1: max AUC 3; c1 holds G6 at rank 2 -> 2/3
    assert r.scores.loc["c1", E] == pytest.approx(2 / 3, abs=1e-9)


def test_aucell_seeded_and_chunk_independent(sim):
    a, sig, _ = sim
    a = a[:300].copy()
    one = aucell(a, sig, seed=3)
    again = aucell(a, sig, seed=3, chunk_size=7)
    pd.testing.assert_frame_equal(one.scores, again.scores)
    other = aucell(a, sig, seed=4)
    assert not one.scores.equals(other.scores)  # ties broken differently


def test_ucell_chunk_independent(sim):
    a, sig, _ = sim
    a = a[:300].copy()
    pd.testing.assert_frame_equal(ucell(a, sig).scores, ucell(a, sig, chunk_size=11).scores)


# ---------------------------------------------------------------------------------------------
# the Unknown rule, shared


def test_decide_rule():
    s = np.array([[0.5, 0.2, np.nan, np.nan],   # argmax
                  [0.3, 0.3, 0.1, np.nan],      # tie at the top
                  [0.0, -1.0, np.nan, np.nan],  # best not above the floor
                  [0.9, 0.1, np.nan, np.nan],   # no marker evidence
                  [np.nan] * 4,                 # nothing scored
                  [0.9, 0.1, np.nan, 0.95]])    # zero counts
    zero = np.array([0, 0, 0, 0, 0, 1], bool)
    no_ev = np.array([0, 0, 0, 1, 0, 0], bool)
    assert decide(s, zero, no_ev).tolist() == [N, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN]
    assert decide(s, zero, no_ev, floor=None)[2] == N


@pytest.mark.parametrize("name", list(BASELINES))
def test_contract(name, sim):
    a, sig, _ = sim
    a = a[:400].copy()
    X = a.X.tolil()
    X[5, :] = 0  # a cell without counts
    a.X = X.tocsr()
    sig = dict(sig)
    sig[CONNECTIVE] = ["NOT_IN_PANEL", "ALSO_ABSENT"]
    r = BASELINES[name](a, sig)
    assert isinstance(r, BaselineResult)
    assert r.labels.shape == (a.n_obs,)
    assert set(r.labels) <= set(SCORED_CLASSES) | {UNKNOWN}
    assert r.scores.index.equals(a.obs_names)
    assert list(r.scores.columns) == list(SCORED_CLASSES)
    assert r.labels[5] == UNKNOWN and r.scores.iloc[5].isna().all()
    assert CONNECTIVE not in set(r.labels) and r.scores[CONNECTIVE].isna().all()
    if name != "AUCell":  # AUCell's random tie-breaking follows the cell order
        perm = np.random.default_rng(0).permutation(a.n_obs)
        rp = BASELINES[name](a[perm].copy(), sig)
        assert (rp.labels == r.labels[perm]).all()
        assert rp.scores.index.equals(a.obs_names[perm])


@pytest.mark.parametrize("name", list(BASELINES))
def test_no_usable_signature(name):
    r = BASELINES[name](toy(), {N: ["ABSENT"], E: []})
    assert (r.labels == UNKNOWN).all() and r.scores.isna().all().all()


def test_unknown_class_key_rejected():
    with pytest.raises(ValueError, match="not among"):
        ucell(toy(), {"Dead": ["G1"]})


# ---------------------------------------------------------------------------------------------
# TopDown


def test_topdown_clear_cut():
    # 4 classes x 5 markers at ~8 counts in their class and ~0.2 elsewhere, 60 background genes
    rng = np.random.default_rng(2)
    n, per, other = 400, 5, 60
    z = rng.integers(0, 4, n)
    lam = np.full((n, 4 * per + other), 1.0)
    lam[:, : 4 * per] = 0.2
    for c in range(4):
        lam[np.ix_(z == c, np.arange(c * per, (c + 1) * per))] = 8.0
    a = ad.AnnData(sparse.csr_matrix(rng.poisson(lam)))
    a.var_names = [f"g{i}" for i in range(a.n_vars)]
    sig = {SCORED_CLASSES[c]: [f"g{i}" for i in range(c * per, (c + 1) * per)] for c in range(4)}
    state = np.random.get_state()
    r = topdown(a, sig)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG restored
    assert (r.labels == np.asarray(SCORED_CLASSES)[z]).mean() >= 0.99
    # own-class score is positive (above its controls) and the largest
    own = r.scores.to_numpy()[np.arange(n), z]
    assert (own > 0).mean() >= 0.99


# ---------------------------------------------------------------------------------------------
# CellAssign


def test_cellassign_recovers_planted_classes(sim):
    a, sig, truth = sim
    r = cellassign(a, sig, seed=0)
    assert (r.labels == truth).mean() >= 0.95
    np.testing.assert_allclose(r.scores.sum(axis=1), 1.0, atol=1e-9)
    assert r.info["converged"]
    L = np.asarray(r.info["loglik"])
    assert np.all(np.diff(L) >= -1e-9 * np.abs(L[:-1]))  # EM never decreases the likelihood
    assert (r.info["delta"]["delta"] >= 2.0 - 1e-12).all()  # min_delta
    again = cellassign(a, sig, seed=0)
    pd.testing.assert_frame_equal(r.scores, again.scores, check_exact=True)
    assert (again.labels == r.labels).all()


def test_cellassign_imbalanced_and_three_classes():
    a, sig, truth = simulate(n=1500, n_classes=3, seed=5, props=[0.75, 0.2, 0.05])
    r = cellassign(a, sig, seed=1)
    assert (r.labels == truth).mean() >= 0.95
    assert r.scores[CONNECTIVE].isna().all()


def test_cellassign_likelihood_and_gradient_match_autograd():
    import torch
    from scipy.stats import nbinom

    rng = np.random.default_rng(0)
    n, g, c = 40, 6, 3
    Y = rng.negative_binomial(2, 0.4, (n, g)).astype(float)
    s = rng.choice([0.5, 1.0, 1.5, 2.0], n)  # few distinct size factors, as with integer libraries
    rho = np.zeros((g, c), bool)
    rho[[0, 1, 2, 3, 4, 4], [0, 0, 1, 2, 1, 2]] = True  # gene 4 marks two classes, gene 5 none
    gp, cp = np.nonzero(rho)
    model = _CellAssignModel(sparse.csr_matrix(Y), s, gp, cp, c)
    beta, ld, lt = rng.normal(size=g), rng.normal(size=gp.size), rng.normal(size=g)
    gamma = rng.dirichlet(np.ones(c), n)

    delta = np.zeros((g, c))
    delta[gp, cp] = np.exp(ld)
    mu = s[:, None, None] * np.exp(beta[None, :, None] + delta[None])
    th = np.exp(lt)[None, :, None]
    ref = nbinom.logpmf(Y[:, :, None], th, th / (th + mu)).sum(axis=1)
    np.testing.assert_allclose(model.loglik(beta, ld, lt), ref, rtol=1e-12, atol=1e-9)

    tb, tl, tt = (torch.tensor(v, requires_grad=True) for v in (beta, ld, lt))
    D = torch.zeros(g, c, dtype=torch.float64).index_put((torch.tensor(gp), torch.tensor(cp)), tl.exp())
    tmu = torch.tensor(s)[:, None, None] * torch.exp(tb[None, :, None] + D[None])
    tth, y = tt.exp()[None, :, None], torch.tensor(Y)[:, :, None]
    lp = (torch.lgamma(y + tth) - torch.lgamma(tth) - torch.lgamma(y + 1)
          + tth * torch.log(tth / (tth + tmu)) + y * torch.log(tmu / (tth + tmu)))
    Q = (torch.tensor(gamma) * lp.sum(dim=1)).sum()
    Q.backward()
    W, YW = model.weights(gamma)
    assert model.q_value(W, YW, beta, ld, lt) == pytest.approx(Q.item(), rel=1e-12)
    for mine, ref_grad in zip(model.gradient(gamma, beta, ld, lt), (tb.grad, tl.grad, tt.grad)):
        np.testing.assert_allclose(mine, ref_grad.numpy(), rtol=1e-9, atol=1e-9)
