"""A second expression generator, written separately from ``stx_platform/synth``, to check that the
label method generalises rather than fits one generator (a test fixture, not a package feature).

It differs from ``stx synth`` on purpose in everything a labeller could latch onto:

* **biology**: its own cell types and marker programs per organ (breast, colon, lung) from textbook
  markers, incl. the cells that break naive rules - myoepithelium (ACTA2+, KRT5/14+: Epithelial),
  DCIS (Neoplastic), smooth muscle and pericytes (ACTA2+: Connective), plasma cells, cycling T
  cells, tumour cells that keep most of their lineage's markers and gain a few (ERBB2, CEACAM6 ...),
  not all of them proliferating;
* **noise**: Poisson-lognormal counts (not gamma-Poisson), per-cell depth varying by type,
  segmentation spill-over from a random neighbour (5-20 % of a cell's counts), non-typing gene
  modules (stress, interferon, ribosome-like housekeeping) switched on in random cells of every
  class, doublets and low-count cells (truth Unknown);
* **panels**: a 20-gene panel (every gene a marker: most DEGs of a cluster are not up), a ~300-gene
  panel and a 5,000-gene panel (the typing genes diluted in thousands of others, many of which are
  markers of something in the databases);
* **class mix**: tumour-rich, immune-rich and normal-rich sections.

``make_section(organ, panel, n_cells, seed)`` -> AnnData of raw counts with ``obs["truth"]`` (one of
Neoplastic, Epithelial, Inflammatory, Connective, Unknown) and ``obs["cell_type"]``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

N_, E_, I_, C_, U_ = "Neoplastic", "Epithelial", "Inflammatory", "Connective", "Unknown"

#: modules active in random cells of every class (they must not decide a label)
NOISE_MODULES = {
    "stress": ["FOS", "FOSB", "JUN", "JUNB", "EGR1", "ATF3", "HSPA1A", "HSPA1B", "DUSP1", "IER2"],
    "interferon": ["ISG15", "IFI6", "IFIT1", "IFIT3", "MX1", "OAS1", "STAT1", "IRF7", "IFI44L", "BST2"],
    "housekeeping": ["ACTB", "GAPDH", "B2M", "TMSB4X", "EEF1A1", "RPLP0", "MALAT1", "FTL", "TPT1", "UBC"],
}
PROLIFERATION = ["MKI67", "TOP2A", "CENPF", "BIRC5", "UBE2C", "TYMS", "PCNA", "MCM2", "CCNB1", "CDK1"]

# cell type -> (class, markers, relative depth); organ-specific epithelium below
SHARED = {
    "fibroblast": (C_, ["COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "PDGFRA", "FAP", "FBLN1", "SFRP2", "MMP2"], 1.0),
    "caf": (C_, ["COL1A1", "COL11A1", "POSTN", "FAP", "COL3A1", "CTHRC1", "INHBA", "LUM", "ACTA2", "MMP11"], 1.2),
    "endothelial": (C_, ["PECAM1", "VWF", "CDH5", "KDR", "CLDN5", "EMCN", "PLVAP", "AQP1", "RAMP2", "ENG"], 0.9),
    "pericyte": (C_, ["RGS5", "PDGFRB", "NOTCH3", "MCAM", "KCNJ8", "HIGD1B", "ACTA2", "CSPG4"], 0.8),
    "smooth_muscle": (C_, ["ACTA2", "MYH11", "DES", "CNN1", "TAGLN", "ACTG2", "LMOD1", "SYNPO2"], 1.1),
    "adipocyte": (C_, ["ADIPOQ", "PLIN1", "LEP", "CIDEA", "LPL", "FABP4", "PPARG"], 0.6),
    "t_cell": (I_, ["PTPRC", "CD3E", "CD3D", "CD2", "TRAC", "IL7R", "CD247", "LCK", "CD8A", "CD4", "CCL5"], 0.5),
    "nk_cell": (I_, ["PTPRC", "NKG7", "GNLY", "KLRD1", "PRF1", "GZMB", "KLRF1", "FCGR3A"], 0.5),
    "b_cell": (I_, ["PTPRC", "MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "PAX5", "CD22"], 0.5),
    "plasma": (I_, ["MZB1", "JCHAIN", "IGKC", "TNFRSF17", "SDC1", "XBP1", "PRDM1", "DERL3"], 1.3),
    "macrophage": (I_, ["PTPRC", "CD68", "CD163", "C1QA", "C1QB", "C1QC", "LYZ", "CSF1R", "MRC1", "MS4A7", "AIF1"], 0.9),
    "mast": (I_, ["PTPRC", "TPSAB1", "CPA3", "KIT", "MS4A2", "HDC", "TPSB2"], 0.7),
    "dendritic": (I_, ["PTPRC", "CLEC9A", "XCR1", "LAMP3", "CCR7", "CD1C", "FCER1A", "ITGAX"], 0.7),
}
ORGANS = {
    "breast": {
        "luminal": (E_, ["KRT8", "KRT18", "KRT19", "KRT7", "ESR1", "PGR", "GATA3", "FOXA1", "ANKRD30A", "PIP",
                         "AZGP1", "EPCAM", "CDH1", "ELF3"], 1.0),
        "luminal_progenitor": (E_, ["KRT15", "ELF5", "KIT", "LTF", "SLPI", "KRT23", "EPCAM", "KRT19", "CDH1"], 1.0),
        "myoepithelial": (E_, ["KRT5", "KRT14", "KRT17", "TP63", "ACTA2", "MYH11", "OXTR", "MYLK", "CNN1"], 1.0),
        # invasive carcinoma and DCIS: the luminal programme kept (partly), tumour genes gained
        "tumour": (N_, ["KRT8", "KRT18", "KRT19", "KRT7", "EPCAM", "CDH1", "GATA3", "FOXA1", "ESR1", "ERBB2",
                        "GRB7", "CEACAM6", "TPD52", "CCND1", "MUC1", "AGR2", "SCD", "FASN", "S100P"], 1.4),
        "dcis": (N_, ["KRT8", "KRT18", "KRT19", "KRT7", "EPCAM", "CDH1", "GATA3", "ERBB2", "GRB7", "CEACAM6",
                      "S100P", "TPD52", "MUC1", "ESR1"], 1.3),
    },
    "colon": {
        "enterocyte": (E_, ["KRT20", "CA1", "CA2", "SLC26A3", "CEACAM7", "AQP8", "GUCA2A", "EPCAM", "CDX2",
                            "CDH17", "VIL1", "KRT8"], 1.0),
        "goblet": (E_, ["MUC2", "TFF3", "SPINK4", "ZG16", "CLCA1", "FCGBP", "REG4", "EPCAM", "CDX2"], 1.0),
        "crypt_stem": (E_, ["LGR5", "OLFM4", "ASCL2", "SMOC2", "EPCAM", "CDX2", "SOX9"], 0.9),
        "tumour": (N_, ["EPCAM", "CDX2", "CDH17", "KRT20", "CEACAM5", "CEACAM6", "LGR5", "ASCL2", "AXIN2",
                        "MYC", "SOX9", "TACSTD2", "LCN2", "MMP7", "CD44", "KRT8"], 1.4),
    },
    "lung": {
        "at2": (E_, ["SFTPC", "SFTPB", "SFTPA1", "SFTPA2", "NAPSA", "LAMP3", "ABCA3", "SLC34A2", "EPCAM",
                     "NKX2-1"], 1.0),
        "at1": (E_, ["AGER", "HOPX", "RTKN2", "EMP2", "CAV1", "CLIC5", "PDPN"], 0.9),
        "club": (E_, ["SCGB1A1", "SCGB3A1", "SCGB3A2", "BPIFB1", "EPCAM", "KRT19"], 1.0),
        "ciliated": (E_, ["FOXJ1", "TPPP3", "CAPS", "PIFO", "RSPH1", "DNAH5", "EPCAM"], 1.0),
        "tumour": (N_, ["NKX2-1", "NAPSA", "SFTPB", "EPCAM", "KRT7", "KRT8", "KRT18", "CEACAM5", "CEACAM6",
                        "MUC1", "EGFR", "TACSTD2", "AGR2", "SCGB3A2", "MDK", "LCN2"], 1.4),
    },
}

#: 20-gene panels: a handful of markers per class, as small targeted panels are built
PANEL20 = {
    "breast": ["ERBB2", "ESR1", "FOXA1", "GATA3", "KRT7", "CEACAM6", "MKI67", "KRT5", "KRT14", "ACTA2",
               "MYH11", "PTPRC", "CD3E", "MS4A1", "CD68", "PECAM1", "VWF", "LUM", "POSTN", "EPCAM"],
    "colon": ["EPCAM", "CDX2", "KRT20", "CEACAM5", "LGR5", "MYC", "MKI67", "MUC2", "CA1", "ACTA2",
              "DES", "PTPRC", "CD3E", "MS4A1", "CD68", "PECAM1", "VWF", "COL1A1", "DCN", "MZB1"],
    "lung": ["NKX2-1", "NAPSA", "SFTPC", "AGER", "CEACAM6", "EGFR", "MKI67", "EPCAM", "SCGB1A1", "FOXJ1",
             "PTPRC", "CD3E", "MS4A1", "CD68", "PECAM1", "VWF", "COL1A1", "DCN", "ACTA2", "LUM"],
}

# class mixes (share of cells per class); types within a class share it by fixed weights
MIXES = {
    "tumour_rich": {N_: 0.45, E_: 0.08, I_: 0.22, C_: 0.25},
    "immune_rich": {N_: 0.25, E_: 0.10, I_: 0.45, C_: 0.20},
    "normal_rich": {N_: 0.12, E_: 0.40, I_: 0.18, C_: 0.30},
}


def _types(organ: str) -> dict[str, tuple[str, list[str], float]]:
    return {**ORGANS[organ], **SHARED}


def panel_genes(organ: str, panel: str, filler: list[str] | None = None) -> list[str]:
    """The panel's genes: ``"20"`` (targeted), ``"300"`` (every typing gene of every organ plus
    noise modules and filler to 300), ``"5k"`` (the same plus filler to 5,000). ``filler``: extra
    real symbols to draw from (e.g. a database's genes); made-up symbols make up the rest."""
    if panel == "20":
        return list(PANEL20[organ])
    typing = []
    for o in ORGANS.values():
        for _, genes, _ in o.values():
            typing += genes
    for _, genes, _ in SHARED.values():
        typing += genes
    typing += PROLIFERATION + [g for m in NOISE_MODULES.values() for g in m]
    genes = list(dict.fromkeys(typing))
    target = {"300": 300, "5k": 5000}[panel]
    pool = [g for g in dict.fromkeys(filler or []) if g not in set(genes)]
    rng = np.random.default_rng(7)
    pool = list(rng.permutation(pool)) if pool else []
    genes += pool[:max(0, target - len(genes))]
    i = 0
    while len(genes) < target:
        genes.append(f"ORF{i:05d}")
        i += 1
    return genes


def make_section(organ: str = "breast", panel: str = "300", n_cells: int = 6000, seed: int = 0,
                 mix: str = "tumour_rich", filler: list[str] | None = None) -> ad.AnnData:
    rng = np.random.default_rng([seed, 911])
    genes = panel_genes(organ, panel, filler)
    gi = {g: i for i, g in enumerate(genes)}
    G = len(genes)
    types = _types(organ)
    # type profiles (log means) from one "biology" per generator, not per section
    brng = np.random.default_rng(4242)
    base = brng.lognormal(np.log(0.05), 1.2, G)            # most panel genes are near silent
    for m in NOISE_MODULES["housekeeping"]:
        if m in gi:
            base[gi[m]] = 2.0
    names = list(types)
    logp = np.zeros((len(names), G))
    for r, t in enumerate(names):
        cls, markers, _ = types[t]
        lp = np.log(base) + brng.normal(0, 0.25, G)
        for j, g in enumerate(markers):
            if g in gi:
                # the first six markers of a type are its strongest
                lp[gi[g]] = np.log(brng.uniform(1.5, 6.0) * (1.0 if j < 6 else 0.6))
        logp[r] = lp
    # section-level class mix -> types
    share = MIXES[mix]
    by_class: dict[str, list[str]] = {}
    for t in names:
        by_class.setdefault(types[t][0], []).append(t)
    p_type = np.array([share[types[t][0]] / len(by_class[types[t][0]]) * rng.uniform(0.5, 1.5) for t in names])
    p_type /= p_type.sum()
    ti = rng.choice(len(names), n_cells, p=p_type)
    lp = logp[ti].copy()
    cls = np.array([types[names[t]][0] for t in ti], dtype=object)
    ctype = np.array([names[t] for t in ti], dtype=object)
    # tumour heterogeneity: subclones lose or gain genes; a fraction of tumour (and of T cells) cycles
    prolif = np.array([gi[g] for g in PROLIFERATION if g in gi], dtype=int)
    cyc = np.zeros(n_cells, bool)
    is_tum = cls == N_
    cyc[is_tum] = rng.random(is_tum.sum()) < 0.35
    cyc[ctype == "t_cell"] = rng.random((ctype == "t_cell").sum()) < 0.15
    if len(prolif):
        lp[np.ix_(cyc, prolif)] = np.log(rng.uniform(1.0, 3.0, (cyc.sum(), len(prolif))))
    if is_tum.any():
        clone = rng.integers(0, 3, n_cells)
        tum_genes = [gi[g] for _, (c, m, _) in types.items() if c == N_ for g in m if g in gi]
        for k in range(3):
            lost = rng.choice(tum_genes, size=max(1, len(tum_genes) // 6), replace=False) if tum_genes else []
            sel = is_tum & (clone == k)
            for j in lost:
                lp[sel, j] -= 2.0
    # noise modules on in random cells of any class
    for mod, mg in NOISE_MODULES.items():
        if mod == "housekeeping":
            continue
        idx = np.array([gi[g] for g in mg if g in gi], dtype=int)
        on = rng.random(n_cells) < 0.12
        if len(idx):
            lp[np.ix_(on, idx)] = np.log(rng.uniform(0.5, 2.0, (on.sum(), len(idx))))
    # cell-level noise, normalise to proportions
    lp += rng.normal(0, 0.5, lp.shape)
    p = np.exp(lp)
    p /= p.sum(1, keepdims=True)
    # spill-over from a random neighbour (segmentation): 5-20 % of the counts
    nb = rng.integers(0, n_cells, n_cells)
    a = rng.uniform(0.05, 0.20, n_cells)[:, None]
    p = (1 - a) * p + a * p[nb]
    # doublets and low-quality cells: truth Unknown
    dbl = rng.random(n_cells) < 0.03
    other = rng.integers(0, n_cells, n_cells)
    p[dbl] = 0.5 * p[dbl] + 0.5 * p[other[dbl]]
    depth_type = np.array([types[names[t]][2] for t in ti])
    scale = {"20": 30.0, "300": 220.0, "5k": 900.0}[panel]
    lib = rng.lognormal(np.log(scale), 0.45, n_cells) * depth_type
    low = rng.random(n_cells) < 0.03
    lib[low] = rng.uniform(2, 8, low.sum())
    counts = rng.poisson(p * lib[:, None]).astype(np.float32)
    truth = cls.copy()
    truth[dbl & (cls != cls[other])] = U_
    truth[low] = U_
    obs = pd.DataFrame({"truth": truth.astype(str), "cell_type": ctype.astype(str)},
                       index=[f"h{seed}_{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))


def pbmc68k() -> ad.AnnData:
    """scanpy's bundled PBMC 68k subset (700 cells, 765 genes; no download) as counts: its ``raw``
    holds log1p(counts / total x 1e4), undone with the stored total; truth: every cell
    Inflammatory except the CD34+ progenitors (Unknown)."""
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    x = a.raw.X.toarray() if sp.issparse(a.raw.X) else np.asarray(a.raw.X)
    counts = np.rint(np.expm1(x) * a.obs["n_counts"].to_numpy()[:, None] / 1e4).astype(np.float32)
    truth = np.where(a.obs["bulk_labels"].astype(str) == "CD34+", U_, I_)
    obs = pd.DataFrame({"truth": truth, "cell_type": a.obs["bulk_labels"].astype(str).to_numpy()},
                       index=a.obs_names.astype(str))
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=a.raw.var_names.astype(str)))
