"""Cells of the synthetic section: positions, fine types, ground-truth labels, nucleus shapes.

Cells are drawn with a density that depends on the compartment (crowded tumour nests and
lymphoid aggregates, single-layer epithelium, sparse stroma), pushed apart to a type-aware
spacing, typed from the compartment's mixture (with tumour-infiltrating lymphocytes near
tumour), and oriented as tissue orients them (columnar nuclei perpendicular to the lumen,
basal / endothelial nuclei along it, fibroblasts along the collagen flow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from stx_platform.synth import layout as L
from stx_platform.synth.celltypes import (
    AMBIGUOUS,
    EPITHELIAL_TYPES,
    SHARED_TYPES,
    STROMAL_T_HYBRID,
    T_TUMOR_HYBRID,
    UNLABELED,
    CellType,
    tumour_types,
)
from stx_platform.synth.nuclei import NucleusShapes, sample_shapes
from stx_platform.synth.organs import OrganRecipe, main_epithelium

# cells per um^2 and minimum spacing (um) per compartment
DENSITY = {L.EPITHELIUM: 1 / 95, L.BASAL: 1 / 140, L.TUMOUR: 1 / 125, L.IMMUNE: 1 / 40, L.VESSEL_WALL: 1 / 55,
           L.MUSCLE: 1 / 150, L.ADIPOSE: 1 / 2200}
KIND_DENSITY = {L.KIND_PLATES: 1 / 330, L.KIND_ALVEOLAR: 1 / 120, L.KIND_EPIDERMIS: 1 / 75}
SPACING = {L.EPITHELIUM: 7.2, L.BASAL: 5.5, L.TUMOUR: 10.0, L.STROMA: 8.0, L.IMMUNE: 5.6, L.VESSEL_WALL: 5.5,
           L.MUSCLE: 6.5, L.ADIPOSE: 30.0}
EMPTY = (L.GLASS, L.LUMEN, L.VESSEL_LUMEN, L.KERATIN, L.NECROSIS)
ROUND = {"lymphocyte", "plasma", "mast", "neutrophil", "hepatocyte", "keratinocyte", "dead"}
RADIAL = {"epithelial_columnar", "epithelial", "tumour"}
TANGENTIAL = {"basal", "endothelial", "flat"}


@dataclass
class CellTable:
    """One row per cell of a synthetic section (lengths in um)."""

    xy: np.ndarray              # (n, 2) nucleus centre
    type_name: np.ndarray       # (n,) fine type that sets morphology and expression
    label: np.ndarray           # (n,) ground-truth fine label (type, or an ambiguous group)
    partner: np.ndarray         # (n,) index of the doublet partner, -1 if none
    low_quality: np.ndarray     # (n,) bool
    compartment: np.ndarray     # (n,) uint8
    shapes: NucleusShapes
    catalogue: dict[str, CellType]

    def __len__(self) -> int:
        return len(self.xy)

    def pannuke_class(self) -> np.ndarray:
        return np.array([self.catalogue[n].pannuke_class for n in self.label])


def organ_catalogue(recipe: OrganRecipe) -> dict[str, CellType]:
    """Every type that can occur in this organ, by name."""
    cat = dict(SHARED_TYPES)
    for g in recipe.glands:
        for n in list(g.lining) + ([g.basal] if g.basal else []):
            cat[n] = EPITHELIAL_TYPES[n] if n in EPITHELIAL_TYPES else SHARED_TYPES[n]
    for n in ("Keratinocytes", "Basal_Cells") if recipe.epidermis else ():
        cat[n] = EPITHELIAL_TYPES[n]
    if recipe.plates:
        cat["Hepatocytes"] = EPITHELIAL_TYPES["Hepatocytes"]
    if recipe.alveoli:
        for n in ("AT1_Pneumocytes", "AT2_Pneumocytes"):
            cat[n] = EPITHELIAL_TYPES[n]
    main = EPITHELIAL_TYPES[main_epithelium(recipe)]
    cat[main.name] = main
    for t in tumour_types(recipe.key, main):
        cat[t.name] = t
    for t in AMBIGUOUS:
        cat[t.name] = t
    return cat


def _mixture(recipe: OrganRecipe, comp: int, kind: int, tdist: float) -> dict[str, float]:
    if comp == L.EPITHELIUM:
        if kind == L.KIND_PLATES:
            return {"Hepatocytes": 1.0, "Macrophages": 0.04}
        if kind == L.KIND_ALVEOLAR:
            return {"AT1_Pneumocytes": 1.0, "AT2_Pneumocytes": 1.1, "Endothelial": 0.9, "Macrophages": 0.45,
                    "Stromal": 0.25}
        if kind == L.KIND_EPIDERMIS:
            return {"Keratinocytes": 1.0, "CD4+_T_Cells": 0.01}
        return dict(recipe.glands[kind].lining)
    if comp == L.BASAL:
        if kind == L.KIND_EPIDERMIS:
            return {"Basal_Cells": 1.0}
        return {recipe.glands[kind].basal or "Stromal": 1.0}
    if comp == L.TUMOUR:
        if kind == L.KIND_INSITU:
            return {"DCIS": 0.9, "Prolif_Invasive_Tumor": 0.06, "CD8+_T_Cells": 0.02, "Macrophages": 0.02}
        return {"Invasive_Tumor": 0.72, "Prolif_Invasive_Tumor": 0.18, "CD8+_T_Cells": 0.03, "CD4+_T_Cells": 0.02,
                "Macrophages": 0.03, "Stromal": 0.02}
    if comp == L.IMMUNE:
        if kind == L.KIND_FOLLICLE:
            return {"B_Cells": 6.0, "CD4+_T_Cells": 0.8, "Macrophages": 0.3, "LAMP3+_DCs": 0.1}
        return {"CD4+_T_Cells": 3.0, "CD8+_T_Cells": 1.5, "B_Cells": 0.8, "LAMP3+_DCs": 0.25, "Macrophages": 0.5,
                "Plasma_Cells": 0.3}
    if comp == L.VESSEL_WALL:
        return {"Endothelial": 0.9, "Perivascular-Like": 0.1}
    if comp == L.MUSCLE:
        return {"Perivascular-Like": 1.0} if kind == L.KIND_MEDIA else {"Smooth_Muscle": 0.93, "Stromal": 0.04,
                                                                           "Endothelial": 0.03}
    if comp == L.ADIPOSE:
        return {"Adipocytes": 0.85, "Stromal": 0.1, "Endothelial": 0.05}
    # stroma: fibroblasts, capillaries, pericytes and scattered immune cells; TILs near tumour
    imm = recipe.stroma_immune + (0.3 if tdist < 60 else 0.0)
    imm = min(imm, 0.9)
    mix = {"Stromal": 0.85 * (1 - imm), "Endothelial": 0.09 * (1 - imm), "Perivascular-Like": 0.06 * (1 - imm)}
    tot = sum(recipe.immune_mix.values())
    for k, v in recipe.immune_mix.items():
        mix[k] = imm * v / tot
    return mix


def _repel(xy: np.ndarray, spacing: np.ndarray, iterations: int = 4) -> np.ndarray:
    xy = xy.copy()
    rmax = float(spacing.max())
    for _ in range(iterations):
        pairs = cKDTree(xy).query_pairs(rmax, output_type="ndarray")
        if len(pairs) == 0:
            break
        i, j = pairs[:, 0], pairs[:, 1]
        d = xy[j] - xy[i]
        dist = np.sqrt((d ** 2).sum(1)) + 1e-6
        need = 0.5 * (spacing[i] + spacing[j])
        push = np.clip(need - dist, 0, None) / 2
        move = d / dist[:, None] * push[:, None]
        delta = np.zeros_like(xy)
        np.add.at(delta, i, -move)
        np.add.at(delta, j, move)
        xy += delta * 0.8
    return xy


def place_cells(layout: L.Layout, recipe: OrganRecipe, n_cells: int, rng: np.random.Generator) -> CellTable:
    g = layout.grid_um
    comp, kind = layout.comp, layout.kind
    dens = np.zeros(comp.shape, np.float64)
    for c, d in DENSITY.items():
        dens[comp == c] = d
    dens[comp == L.STROMA] = recipe.stroma_density
    for k, d in KIND_DENSITY.items():
        dens[(comp == L.EPITHELIUM) & (kind == k)] = d
    for fi, fam in enumerate(recipe.glands):
        if fam.solid:
            dens[(comp == L.EPITHELIUM) & (kind == fi)] = 1 / 70
    flat = dens.ravel()
    p = flat / flat.sum()
    n_draw = int(n_cells * 1.04)  # a few are lost to spacing and empty compartments
    idx = rng.choice(flat.size, n_draw, p=p)
    ys, xs = np.divmod(idx, comp.shape[1])
    xy = (np.stack([xs, ys], 1) + rng.uniform(0, 1, (n_draw, 2))) * g

    c0 = layout.lookup(xy[:, 0], xy[:, 1])
    spacing = np.vectorize(lambda c: SPACING.get(int(c), 7.0))(c0).astype(float)
    xy = _repel(xy, spacing)
    w_um, h_um = layout.size_um
    m = 12.0  # the H&E covers every nucleus whole, as a scan covers the Xenium region with margin
    inside = (xy[:, 0] > m) & (xy[:, 1] > m) & (xy[:, 0] < w_um - m) & (xy[:, 1] < h_um - m)
    xy = xy[inside]
    c = layout.lookup(xy[:, 0], xy[:, 1])
    keep = ~np.isin(c, EMPTY)
    xy = xy[keep]
    # drop residual near-duplicates
    pairs = cKDTree(xy).query_pairs(2.5, output_type="ndarray")
    drop = np.zeros(len(xy), bool)
    drop[pairs[:, 1]] = True
    xy = xy[~drop]
    if len(xy) > n_cells:
        xy = xy[np.sort(rng.choice(len(xy), n_cells, replace=False))]
    # reading order (rows of 100 um, then x) gives ids that grow across the slide as Xenium's do
    order = np.lexsort((xy[:, 0], np.floor(xy[:, 1] / 100.0)))
    xy = xy[order]

    comp_c = layout.lookup(xy[:, 0], xy[:, 1]).astype(np.uint8)
    kind_c = layout.lookup(xy[:, 0], xy[:, 1], "kind").astype(int)
    tdist = layout.lookup(xy[:, 0], xy[:, 1], "tumour_dist")
    catalogue = organ_catalogue(recipe)

    # type draw, grouped by (compartment, kind, near-tumour)
    types = np.empty(len(xy), dtype=object)
    near = (tdist < 60).astype(int)
    keys = comp_c.astype(np.int64) * 100000 + (kind_c + 1000) * 10 + near
    for key in np.unique(keys):
        sel = np.flatnonzero(keys == key)
        cc, kk, nn = int(comp_c[sel[0]]), int(kind_c[sel[0]]), int(near[sel[0]])
        mix = _mixture(recipe, cc, kk, 0.0 if nn else 1e9)
        mix = {k: v for k, v in mix.items() if k in catalogue and v > 0}
        names = list(mix)
        pr = np.array([mix[k] for k in names], float)
        types[sel] = np.array(names, dtype=object)[rng.choice(len(names), len(sel), p=pr / pr.sum())]
    types = types.astype(str)

    # orientation
    lumen_like = np.isin(comp, (L.LUMEN, L.VESSEL_LUMEN))
    morph = np.array([catalogue[t].morphology for t in types])
    ang = rng.uniform(0, np.pi, len(xy))
    flow = layout.lookup(xy[:, 0], xy[:, 1], "flow")
    spindle = np.isin(morph, ["fibroblast", "smooth_muscle", "adipocyte"])
    ang[spindle] = flow[spindle] + rng.normal(0, 0.18, spindle.sum())
    if lumen_like.any():
        _, (iy, ix) = ndimage.distance_transform_edt(~lumen_like, return_indices=True)
        gx = np.clip((xy[:, 0] / g).astype(int), 0, comp.shape[1] - 1)
        gy = np.clip((xy[:, 1] / g).astype(int), 0, comp.shape[0] - 1)
        normal = np.arctan2(iy[gy, gx] * g - xy[:, 1], ix[gy, gx] * g - xy[:, 0])
        radial = np.isin(morph, list(RADIAL)) & np.isin(comp_c, (L.EPITHELIUM, L.TUMOUR))
        ang[radial] = normal[radial] + rng.normal(0, 0.25, radial.sum())
        tang = np.isin(morph, list(TANGENTIAL))
        ang[tang] = normal[tang] + np.pi / 2 + rng.normal(0, 0.15, tang.sum())

    # nucleus size capped by the neighbourhood so nuclei rarely overlap
    dnn, inn = cKDTree(xy).query(xy, k=2)
    cap = dnn[:, 1] * 0.7
    shapes = sample_shapes(morph, xy, ang, rng, max_major=np.maximum(cap, 2.0))

    # ambiguous group (ground truth): low-quality cells and doublets
    n = len(xy)
    label = types.astype(object)
    low = rng.uniform(0, 1, n) < 0.035
    label[low] = UNLABELED.name
    partner = np.full(n, -1)
    cls = np.array([catalogue[t].pannuke_class for t in types])
    nb = inn[:, 1]
    cand = np.flatnonzero((cls != cls[nb]) & ~low)
    dbl = cand[rng.uniform(0, 1, len(cand)) < 0.12]
    partner[dbl] = nb[dbl]
    is_t = np.char.find(types.astype(str), "T_Cells") >= 0
    is_tum = cls == "Neoplastic"
    is_str = types == "Stromal"
    for i in dbl:
        j = nb[i]
        if (is_t[i] and is_tum[j]) or (is_tum[i] and is_t[j]):
            label[i] = T_TUMOR_HYBRID.name
        elif (is_t[i] and is_str[j]) or (is_str[i] and is_t[j]):
            label[i] = STROMAL_T_HYBRID.name
        else:
            label[i] = UNLABELED.name
    return CellTable(xy, types, label.astype(str), partner, low, comp_c, shapes, catalogue)
