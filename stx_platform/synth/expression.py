"""Expression of the synthetic cells on the gene panel.

Each type has a mean profile: a gene baseline (log-normal across genes), an organ effect, and
for regulated genes (any type's marker or program) a low "off" state (x0.08) that only the
types carrying them lift: programs x12-40, canonical markers x30-120 over the off state, so a
marker is near zero outside its type, as panel genes are chosen to be. The profiles are the same
"biology" for every slide (fixed seed); slides differ by a per-gene batch effect and depth.
Per cell: library size log-normal around the type's median (tens to hundreds), counts
negative binomial (gamma-Poisson, dispersion 1/theta) around library x profile. Low-quality
cells get a handful of counts; doublets mix two neighbours' profiles; a few lymphocytes cycle.
Spill-over between neighbours happens later, at the transcript level.
"""

from __future__ import annotations

import numpy as np

from stx_platform.synth.celltypes import CellType, all_programs
from stx_platform.synth.panel import gene_panel

BIOLOGY_SEED = 20_230_906
NB_THETA = 3.0
OFF_STATE = 0.08


def _fold(rng_key: str, n: int, lo: float, hi: float) -> np.ndarray:
    """Deterministic folds per (key, gene) from the fixed biology seed."""
    h = np.frombuffer(rng_key.encode(), np.uint8).astype(np.uint64).sum() * 2654435761 % (2 ** 32)
    rng = np.random.default_rng([BIOLOGY_SEED, int(h)])
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def type_profiles(catalogue: dict[str, CellType], organ: str) -> tuple[list[str], np.ndarray]:
    """Mean expression proportions per type: (type names, array types x genes), rows sum to 1."""
    genes = gene_panel()
    gi = {g: i for i, g in enumerate(genes)}
    rng = np.random.default_rng(BIOLOGY_SEED)
    base = rng.lognormal(np.log(0.35), 0.9, len(genes))
    organ_eff = _fold(f"organ:{organ}", len(genes), 0.7, 1.4)
    programs = all_programs()
    regulated = {g for gs in programs.values() for g in gs}
    for t in catalogue.values():
        regulated |= set(t.markers)
    off = np.array([OFF_STATE if g in regulated else 1.0 for g in genes])
    names = [n for n, t in catalogue.items() if t.markers or t.programs]
    prof = np.zeros((len(names), len(genes)))
    for r, name in enumerate(names):
        t = catalogue[name]
        logm = np.log(base * organ_eff * off) + np.log(_fold(f"type:{name}", len(genes), 0.8, 1.25))
        for p in t.programs:
            idx = [gi[g] for g in programs[p]]
            logm[idx] += np.log(_fold(f"prog:{p}", len(idx), 12.0, 40.0))
        idx = [gi[g] for g in t.markers]
        logm[idx] += np.log(_fold(f"mark:{name}:{organ}", len(idx), 30.0, 120.0))
        m = np.exp(logm)
        prof[r] = m / m.sum()
    return names, prof


def simulate_counts(types: np.ndarray, partner: np.ndarray, low_quality: np.ndarray,
                    catalogue: dict[str, CellType], organ: str, rng: np.random.Generator,
                    depth: float = 1.0, chunk: int = 20_000) -> np.ndarray:
    """Integer counts (cells x panel genes, int32) as the cells truly hold them."""
    names, prof = type_profiles(catalogue, organ)
    row = {n: i for i, n in enumerate(names)}
    t_idx = np.array([row[t] for t in types])
    lib_med = np.array([catalogue[names[i]].library_size for i in range(len(names))])
    n, G = len(types), prof.shape[1]
    batch = rng.lognormal(0, 0.15, G)
    prolif = np.array([all_programs()["proliferation"]])
    gi = {g: i for i, g in enumerate(gene_panel())}
    prolif_idx = np.array([gi[g] for g in prolif[0]])
    is_lymph = np.isin(types, ["CD4+_T_Cells", "CD8+_T_Cells", "B_Cells"])
    cycling = is_lymph & (rng.uniform(0, 1, n) < 0.04)
    out = np.zeros((n, G), np.int32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        p = prof[t_idx[s:e]] * batch[None, :]
        has_p = partner[s:e] >= 0
        if has_p.any():
            alpha = rng.uniform(0.35, 0.65, has_p.sum())[:, None]
            p[has_p] = alpha * p[has_p] + (1 - alpha) * prof[t_idx[partner[s:e][has_p]]] * batch[None, :]
        cyc = cycling[s:e]
        if cyc.any():
            p[np.ix_(cyc, prolif_idx)] *= 6.0
        p /= p.sum(1, keepdims=True)
        lib = rng.lognormal(np.log(lib_med[t_idx[s:e]] * depth), 0.45)
        lib[has_p] *= 1.5
        lq = low_quality[s:e]
        lib[lq] = rng.uniform(2, 12, lq.sum())
        lam = p * lib[:, None]
        out[s:e] = rng.poisson(rng.gamma(NB_THETA, lam / NB_THETA))
    return out
