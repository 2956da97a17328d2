"""Per-organ tissue recipes: architecture, cell-type mixtures, metadata naming.

The ten organs of the paper's training set plus three usable as held-out organs. Each recipe
says which structures the tissue holds (glands, tubules, alveoli, plates, epidermis...), how
they are lined, how the tumour grows (nests, in-situ filling, glands, sheets) and which types
populate each compartment. Mixtures are relative weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stx_platform.synth.celltypes import EPITHELIAL_TYPES


@dataclass(frozen=True)
class GlandSpec:
    """A family of epithelial structures (acini, ducts, crypts, tubules, follicles...)."""

    lining: dict[str, float]                 # epithelial types lining it
    radius_um: tuple[float, float]           # outer radius range
    lumen_frac: tuple[float, float] = (0.35, 0.6)  # lumen radius / outer radius
    elongation: tuple[float, float] = (1.0, 1.5)  # major / minor axis
    basal: str | None = None                 # outer basal / myoepithelial layer type
    folds: float = 0.0                       # papillary in-foldings (0..1)
    lumen: str = "empty"                     # empty | secretion | colloid | mucin | air
    weight: float = 1.0                      # relative frequency among the organ's structures
    clustered: bool = False                  # grouped in lobules (breast acini, pancreatic acini)
    solid: bool = False                      # a solid ball (islets, glomeruli)


@dataclass(frozen=True)
class OrganRecipe:
    key: str
    hest_organ: str           # metadata 'organ' as HEST writes it
    pannuke_tissue: str       # PanNuke tissue name
    tissue: str               # metadata 'tissue'
    oncotree_code: str        # tumour subtype code (OncoTree)
    glands: tuple[GlandSpec, ...]
    gland_area: float         # fraction of tissue covered by structures
    tumour_pattern: str       # nests | in_situ | glands | sheets
    tumour_area: tuple[float, float]
    stroma_density: float = 1 / 280.0     # cells per um^2 in plain stroma
    stroma_immune: float = 0.22           # share of immune cells among stromal cells
    immune_mix: dict[str, float] = field(default_factory=lambda: {
        "CD4+_T_Cells": 3, "CD8+_T_Cells": 2.5, "B_Cells": 1, "Plasma_Cells": 1.2, "Macrophages": 2.5,
        "Mast_Cells": 0.5, "LAMP3+_DCs": 0.3, "Neutrophils": 0.3})
    aggregates_per_mm2: float = 1.0
    adipose_area: float = 0.0
    muscle_band: bool = False
    epidermis: bool = False
    plates: bool = False          # liver-style parenchyma of cords instead of discrete glands
    alveoli: bool = False         # lung-style air spaces with thin septa
    vessel_per_mm2: float = 60.0


def _g(lining, radius, **kw) -> GlandSpec:
    return GlandSpec(lining=dict(lining), radius_um=radius, **kw)


RECIPES: dict[str, OrganRecipe] = {r.key: r for r in [
    OrganRecipe("breast", "Breast", "Breast", "breast", "IDC",
                glands=(_g({"Luminal_Epithelial": 1}, (18, 32), basal="Myoepi_ACTA2+", clustered=True, weight=3),
                        _g({"Luminal_Epithelial": 1}, (45, 90), basal="Myoepi_ACTA2+", lumen_frac=(0.55, 0.75),
                           lumen="secretion", elongation=(1.2, 2.2))),
                gland_area=0.16, tumour_pattern="in_situ", tumour_area=(0.2, 0.4), adipose_area=0.18),
    OrganRecipe("colon", "Bowel", "Colon", "colon", "COAD",
                glands=(_g({"Colonocytes": 2, "Goblet_Cells": 1.2}, (24, 34), lumen_frac=(0.25, 0.4),
                           lumen="mucin", elongation=(1.0, 1.4)),),
                gland_area=0.42, tumour_pattern="glands", tumour_area=(0.25, 0.45), stroma_immune=0.45,
                stroma_density=1 / 170.0, muscle_band=True,
                immune_mix={"CD4+_T_Cells": 2, "CD8+_T_Cells": 1.5, "B_Cells": 0.8, "Plasma_Cells": 3.5,
                            "Macrophages": 2.5, "Mast_Cells": 0.6, "LAMP3+_DCs": 0.3, "Neutrophils": 0.4}),
    OrganRecipe("stomach", "Stomach", "Stomach", "stomach", "STAD",
                glands=(_g({"Foveolar_Cells": 2, "Chief_Parietal_Cells": 1.5}, (20, 30), lumen_frac=(0.2, 0.35),
                           lumen="mucin"),),
                gland_area=0.4, tumour_pattern="nests", tumour_area=(0.2, 0.4), stroma_immune=0.4,
                stroma_density=1 / 190.0, muscle_band=True,
                immune_mix={"CD4+_T_Cells": 2, "CD8+_T_Cells": 1.5, "B_Cells": 1, "Plasma_Cells": 3,
                            "Macrophages": 2, "Mast_Cells": 0.6, "LAMP3+_DCs": 0.3, "Neutrophils": 0.6}),
    OrganRecipe("kidney", "Kidney", "Kidney", "kidney", "CCRCC",
                glands=(_g({"Proximal_Tubule": 1}, (18, 28), lumen_frac=(0.2, 0.35), weight=3),
                        _g({"Distal_Tubule": 1}, (14, 22), lumen_frac=(0.35, 0.5), weight=1.5),
                        _g({"Podocytes": 1.2, "Endothelial": 1, "Perivascular-Like": 0.8}, (70, 95), solid=True,
                           weight=0.12)),
                gland_area=0.5, tumour_pattern="sheets", tumour_area=(0.25, 0.45), stroma_immune=0.2),
    OrganRecipe("liver", "Liver", "Liver", "liver", "HCC",
                glands=(_g({"Cholangiocytes": 1}, (10, 18), lumen_frac=(0.3, 0.45)),),
                gland_area=0.02, tumour_pattern="sheets", tumour_area=(0.25, 0.45), stroma_immune=0.3,
                plates=True),
    OrganRecipe("lung", "Lung", "Lung", "lung", "LUAD",
                glands=(_g({"Club_Ciliated_Cells": 1}, (60, 110), lumen_frac=(0.6, 0.75), basal="Basal_Cells",
                           lumen="air", elongation=(1.1, 1.8)),),
                gland_area=0.04, tumour_pattern="glands", tumour_area=(0.2, 0.4), stroma_immune=0.3,
                alveoli=True, aggregates_per_mm2=1.5),
    OrganRecipe("pancreas", "Pancreas", "Pancreatic", "pancreas", "PAAD",
                glands=(_g({"Acinar_Cells": 1}, (13, 20), lumen_frac=(0.08, 0.16), clustered=True, weight=6),
                        _g({"Ductal_Cells": 1}, (20, 45), lumen_frac=(0.5, 0.7)),
                        _g({"Islet_Cells": 1, "Endothelial": 0.15}, (45, 80), solid=True, weight=0.3)),
                gland_area=0.45, tumour_pattern="glands", tumour_area=(0.2, 0.35), stroma_density=1 / 320.0),
    OrganRecipe("prostate", "Prostate", "Prostate", "prostate", "PRAD",
                glands=(_g({"Prostate_Luminal": 1}, (50, 110), lumen_frac=(0.65, 0.8), basal="Basal_Cells",
                           folds=0.6, lumen="secretion", elongation=(1.1, 1.8)),),
                gland_area=0.3, tumour_pattern="glands", tumour_area=(0.2, 0.4), muscle_band=True,
                stroma_density=1 / 230.0),
    OrganRecipe("skin", "Skin", "Skin", "skin", "CSCC",
                glands=(_g({"Keratinocytes": 1}, (25, 40), lumen_frac=(0.0, 0.15), basal="Basal_Cells", weight=1),),
                gland_area=0.02, tumour_pattern="nests", tumour_area=(0.2, 0.4), epidermis=True,
                adipose_area=0.08),
    OrganRecipe("ovary", "Ovary", "Ovarian", "ovary", "HGSOC",
                glands=(_g({"Ovarian_Epithelium": 1}, (30, 60), lumen_frac=(0.6, 0.8), lumen="secretion"),),
                gland_area=0.05, tumour_pattern="nests", tumour_area=(0.25, 0.45), stroma_density=1 / 120.0,
                stroma_immune=0.12),
    OrganRecipe("thyroid", "Thyroid", "Thyroid", "thyroid", "THPA",
                glands=(_g({"Thyrocytes": 1}, (30, 90), lumen_frac=(0.7, 0.85), lumen="colloid"),),
                gland_area=0.6, tumour_pattern="glands", tumour_area=(0.2, 0.35), stroma_immune=0.25),
    OrganRecipe("uterus", "Uterus", "Uterus", "uterus", "UEC",
                glands=(_g({"Endometrial_Epithelium": 1}, (25, 45), lumen_frac=(0.35, 0.55), elongation=(1.2, 2.5)),),
                gland_area=0.18, tumour_pattern="glands", tumour_area=(0.2, 0.4), stroma_density=1 / 110.0,
                stroma_immune=0.15, muscle_band=True),
    OrganRecipe("lymph_node", "Lymphoid", "Lymph_node", "lymph node", "BRCA",
                glands=(_g({"Luminal_Epithelial": 1}, (20, 30), weight=1),),
                gland_area=0.0, tumour_pattern="nests", tumour_area=(0.08, 0.18), stroma_immune=0.8,
                stroma_density=1 / 45.0, aggregates_per_mm2=6.0,
                immune_mix={"CD4+_T_Cells": 4, "CD8+_T_Cells": 2, "B_Cells": 3, "Plasma_Cells": 0.8,
                            "Macrophages": 1.5, "Mast_Cells": 0.1, "LAMP3+_DCs": 0.6, "Neutrophils": 0.1}),
]}

#: The paper's training organs, and organs kept for held-out evaluation.
TRAINING_ORGANS: tuple[str, ...] = ("breast", "colon", "kidney", "liver", "lung", "ovary", "pancreas",
                                    "prostate", "skin", "stomach")
HELDOUT_ORGANS: tuple[str, ...] = ("thyroid", "uterus", "lymph_node")


def recipe(organ: str) -> OrganRecipe:
    from stx_platform.organs import canonical_organ

    key = canonical_organ(organ)
    if key not in RECIPES:
        raise ValueError(f"unknown organ {organ!r}; known: {', '.join(RECIPES)}")
    return RECIPES[key]


def main_epithelium(r: OrganRecipe) -> str:
    """The epithelial type that the organ's carcinoma derives from."""
    lining = max(r.glands, key=lambda g: g.weight).lining
    name = max(lining, key=lining.get)
    if r.epidermis:
        name = "Keratinocytes"
    if r.plates:
        name = "Hepatocytes"
    if r.alveoli:
        name = "AT2_Pneumocytes"
    assert name in EPITHELIAL_TYPES, name
    return name
