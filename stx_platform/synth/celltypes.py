"""Fine-grained cell types of the synthetic tissue and the PanNuke class each maps onto.

Names follow the style of the 10x breast Xenium supervised annotation (Janesick et al. 2023:
``DCIS``, ``Invasive_Tumor``, ``Myoepi_ACTA2+``, ``CD8+_T_Cells``, ``Stromal``,
``Stromal_&_T_Cell_Hybrid``, ``Unlabeled``, ...), extended with the organ-specific epithelia of
the other organs. Each type has a nucleus morphology (see ``nuclei.MORPHOLOGY``), its
canonical marker genes and the shared expression programs it carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stx_platform.taxonomy import (
    CONNECTIVE,
    EPITHELIAL,
    INFLAMMATORY,
    NEOPLASTIC,
    UNKNOWN,
)


@dataclass(frozen=True)
class CellType:
    name: str
    pannuke_class: str
    morphology: str
    markers: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    #: median transcripts per cell on the panel (Xenium: tens to hundreds)
    library_size: float = 120.0
    #: cytoplasm appearance key (see ``render.CYTOPLASM``)
    cytoplasm: str = "pink"
    #: nominal cell radius in um (cytoplasm extent around the nucleus)
    cell_radius_um: float = 6.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)


#: Gene programs shared by several types (moderate up-regulation).
PROGRAMS: dict[str, tuple[str, ...]] = {
    "epithelial": ("EPCAM", "KRT8", "KRT18", "KRT19", "CDH1", "CLDN4", "CLDN7", "ELF3"),
    "immune": ("PTPRC", "CORO1A", "LCP1", "CXCR4", "RHOH", "IL2RG"),
    "t_cell": ("CD3E", "CD3D", "CD3G", "CD2", "CD247", "TRAC", "LCK", "CD7"),
    "cytotoxic": ("NKG7", "GZMA", "GZMB", "GZMK", "PRF1", "CCL5", "GNLY"),
    "b_lineage": ("CD79A", "CD79B", "MS4A1", "CD19", "BANK1", "PAX5", "CD22"),
    "myeloid": ("CD68", "LYZ", "TYROBP", "FCER1G", "CSF1R", "AIF1", "CD14", "ITGAM"),
    "fibroblast": ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "PDGFRA", "FBLN1", "MMP2"),
    "vascular": ("PECAM1", "VWF", "CDH5", "KDR", "CLDN5", "EMCN", "PLVAP", "AQP1"),
    "mural": ("ACTA2", "TAGLN", "MYH11", "RGS5", "PDGFRB", "MCAM", "NOTCH3", "DES"),
    "proliferation": ("MKI67", "TOP2A", "CENPF", "BIRC5", "CCNB1", "UBE2C", "CDK1", "TYMS"),
    "squamous": ("KRT5", "KRT14", "KRT6A", "KRT17", "SFN", "DSP", "JUP", "DSC2"),
}

# Inflammatory and connective types are shared by every organ.
_SHARED = [
    CellType("CD4+_T_Cells", INFLAMMATORY, "lymphocyte", ("CD4", "IL7R", "CCR7", "TCF7", "CD28", "FOXP3"),
             ("immune", "t_cell"), 70, "scant", 4.0),
    CellType("CD8+_T_Cells", INFLAMMATORY, "lymphocyte", ("CD8A", "CD8B", "GZMK", "CD27", "LAG3", "TIGIT"),
             ("immune", "t_cell", "cytotoxic"), 70, "scant", 4.0),
    CellType("B_Cells", INFLAMMATORY, "lymphocyte", ("MS4A1", "CD19", "BANK1", "CD22", "FCRL5", "CR2"),
             ("immune", "b_lineage"), 65, "scant", 4.0),
    CellType("Plasma_Cells", INFLAMMATORY, "plasma", ("MZB1", "JCHAIN", "TNFRSF17", "DERL3", "PRDM1", "SLAMF7"),
             ("immune",), 160, "basophilic", 5.5),
    CellType("Macrophages", INFLAMMATORY, "macrophage", ("CD68", "CD163", "C1QA", "C1QC", "MRC1", "FCGR3A"),
             ("immune", "myeloid"), 140, "pale_pink", 7.0),
    CellType("Mast_Cells", INFLAMMATORY, "mast", ("TPSAB1", "CPA3", "KIT", "MS4A2", "HDC"),
             ("immune",), 110, "granular", 5.5),
    CellType("LAMP3+_DCs", INFLAMMATORY, "dendritic", ("LAMP3", "CCR7", "CD83", "CD80", "CD86", "CLEC9A"),
             ("immune", "myeloid"), 100, "pale_pink", 6.0),
    CellType("Neutrophils", INFLAMMATORY, "neutrophil", ("S100A8", "S100A9", "CSF3R", "FCGR3B", "CXCR2", "MNDA"),
             ("immune",), 60, "pale_pink", 5.0),
    CellType("Stromal", CONNECTIVE, "fibroblast", ("COL1A1", "COL1A2", "DCN", "LUM", "PDGFRA", "SFRP4"),
             ("fibroblast",), 110, "stroma", 5.0),
    CellType("Endothelial", CONNECTIVE, "endothelial", ("PECAM1", "VWF", "CDH5", "KDR", "CLDN5", "EMCN"),
             ("vascular",), 100, "stroma", 4.0),
    CellType("Perivascular-Like", CONNECTIVE, "smooth_muscle", ("RGS5", "PDGFRB", "MCAM", "NOTCH3", "ACTA2"),
             ("mural",), 110, "muscle", 5.0),
    CellType("Smooth_Muscle", CONNECTIVE, "smooth_muscle", ("MYH11", "DES", "ACTG2", "CNN1", "ACTA2", "SYNPO2"),
             ("mural",), 120, "muscle", 6.0),
    CellType("Adipocytes", CONNECTIVE, "adipocyte", ("ADIPOQ", "PLIN1", "LEP", "CIDEA", "LPL", "PPARG"),
             (), 90, "fat", 30.0),
]

#: Ambiguous / low-quality group: in the ground truth, not scored (class Unknown).
UNLABELED = CellType("Unlabeled", UNKNOWN, "as_host")
STROMAL_T_HYBRID = CellType("Stromal_&_T_Cell_Hybrid", UNKNOWN, "as_host")
T_TUMOR_HYBRID = CellType("T_Cell_&_Tumor_Hybrid", UNKNOWN, "as_host")
AMBIGUOUS = (UNLABELED, STROMAL_T_HYBRID, T_TUMOR_HYBRID)


def _epi(name, morph, markers, lib=150, cyto="epithelial", radius=6.5, programs=("epithelial",)):
    return CellType(name, EPITHELIAL, morph, tuple(markers), tuple(programs), lib, cyto, radius)


# Organ-specific normal epithelia.
_EPITHELIA = [
    _epi("Luminal_Epithelial", "epithelial", ("GATA3", "ESR1", "PGR", "ANKRD30A", "FOXA1", "KRT7")),
    _epi("Myoepi_ACTA2+", "basal", ("ACTA2", "KRT5", "KRT14", "KRT17", "MYLK", "OXTR"), 130, "pink", 5.0,
         ("squamous",)),
    _epi("Colonocytes", "epithelial_columnar", ("CDX2", "CDX1", "VIL1", "LGALS4", "CDH17", "KRT20")),
    _epi("Goblet_Cells", "epithelial_columnar", ("MUC2", "TFF3", "SPINK4", "FCGBP", "CLCA1", "ZG16"), 140, "mucin"),
    _epi("Foveolar_Cells", "epithelial_columnar", ("MUC5AC", "TFF1", "TFF2", "GKN1", "GKN2", "VSIG1"), 150, "mucin"),
    _epi("Chief_Parietal_Cells", "epithelial", ("PGC", "PGA3", "ATP4A", "ATP4B", "CBLIF", "LIPF"), 170, "pink"),
    _epi("Proximal_Tubule", "epithelial", ("LRP2", "CUBN", "SLC34A1", "GPX3", "MIOX", "ALDOB"), 170, "pink"),
    _epi("Distal_Tubule", "epithelial", ("UMOD", "SLC12A1", "SLC12A3", "CALB1", "PAX2", "PAX8"), 150, "pink"),
    _epi("Podocytes", "epithelial", ("NPHS1", "NPHS2", "PODXL", "WT1", "PTPRO"), 130, "pink", 5.5),
    _epi("Hepatocytes", "hepatocyte", ("ALB", "APOA1", "APOA2", "APOC3", "TF", "HP"),
         230, "hepatocyte", 11.0),
    _epi("Cholangiocytes", "epithelial", ("KRT7", "SOX9", "CFTR", "SPP1", "ANXA4"), 140),
    _epi("AT1_Pneumocytes", "flat", ("AGER", "EMP2", "RTKN2", "CAV1", "HOPX"), 110, "pink", 4.5),
    _epi("AT2_Pneumocytes", "epithelial", ("SFTPC", "SFTPB", "SFTPA1", "SFTPA2", "NAPSA", "SLC34A2"), 160, "foamy"),
    _epi("Club_Ciliated_Cells", "epithelial_columnar", ("SCGB1A1", "SCGB3A2", "FOXJ1", "CAPS", "TPPP3"), 140),
    _epi("Acinar_Cells", "epithelial", ("PRSS1", "CPA1", "CELA3A", "CTRB2", "PNLIP", "CPB1"), 200, "basophilic_apical"),
    _epi("Ductal_Cells", "epithelial", ("SOX9", "CFTR", "MUC1", "KRT7", "ONECUT1"), 130),
    _epi("Islet_Cells", "epithelial", ("INS", "GCG", "SST", "CHGA", "PCSK1"), 150, "pale_pink"),
    _epi("Prostate_Luminal", "epithelial_columnar", ("KLK3", "KLK2", "ACP3", "MSMB", "NKX3-1", "AR"), 160, "pale_pink"),
    _epi("Basal_Cells", "basal", ("KRT5", "KRT15", "TP63", "KRT14"), 120, "pink", 5.0, ("squamous",)),
    _epi("Keratinocytes", "keratinocyte", ("KRT1", "KRT10", "DSG1", "IVL", "FLG", "KRT2"), 150, "keratin", 7.5,
         ("epithelial", "squamous")),
    _epi("Ovarian_Epithelium", "epithelial", ("PAX8", "KRT7", "MSLN", "FOXJ1", "OVGP1"), 130),
    _epi("Thyrocytes", "epithelial", ("TG", "TPO", "TSHR", "PAX8", "NKX2-1", "DIO1"), 150),
    _epi("Endometrial_Epithelium", "epithelial_columnar", ("PAX8", "PGR", "ESR1", "MUC1", "SOX17", "MSX1"), 150),
]

# Organ-specific tumour programs: drivers and genes up in the carcinoma of that organ
# (many of them in CancerSEA's proliferation / metastasis / invasion states or CellMarker
# cancer-cell entries, as real carcinoma DEGs are).
TUMOUR_PROGRAMS: dict[str, tuple[str, ...]] = {
    "breast": ("ERBB2", "GRB7", "CCND1", "MYC", "CD24", "KRT23", "TPD52", "CEACAM6"),
    "colon": ("CEACAM6", "LGR5", "OLFM4", "ASCL2", "MYC", "AXIN2", "CD44", "SOX9"),
    "stomach": ("CLDN18", "CEACAM6", "ERBB2", "CDH17", "CD44", "MUC13", "REG4", "LGALS4"),
    "kidney": ("CA9", "NDUFA4L2", "VEGFA", "ANGPTL4", "EGLN3", "CD70", "PLIN2"),
    "liver": ("GPC3", "AFP", "AKR1B10", "SPINK1", "TOP2A", "LCN2", "CD24"),
    "lung": ("CEACAM6", "CEACAM5", "MUC5B", "AGR2", "SPP1", "CD24", "EGFR", "MDM2"),
    "pancreas": ("KRT17", "S100P", "MSLN", "CEACAM6", "AGR2", "TFF1", "CLDN18", "LAMC2"),
    "prostate": ("AMACR", "ERG", "FOLH1", "TMPRSS2", "MYC", "SPDEF", "HPN"),
    "skin": ("KRT17", "KRT6A", "MMP1", "LAMC2", "SERPINB9", "TP63", "MMP12"),
    "ovary": ("WT1", "MUC16", "MSLN", "CRABP2", "FOLR1", "CD24", "CCNE1"),
    "thyroid": ("LGALS3", "FN1", "KRT19", "TIMP1", "SERPINA1", "MET"),
    "uterus": ("MMP7", "CDKN2A", "L1CAM", "SOX17", "CCNE1", "MKI67"),
    "lymph_node": ("ERBB2", "CD24", "KRT23", "CEACAM6", "MYC", "CCND1"),
}


def tumour_types(organ: str, epithelium: CellType) -> list[CellType]:
    """The organ's neoplastic types: carcinoma cells that keep part of their epithelium's identity."""
    prog = f"tumour_{organ}"
    common = dict(pannuke_class=NEOPLASTIC, morphology="tumour", cytoplasm="tumour", cell_radius_um=8.0)
    kept = epithelium.markers[: max(2, len(epithelium.markers) // 2)]
    types = [
        CellType("Invasive_Tumor", markers=kept, programs=("epithelial", prog), library_size=220, **common),
        CellType("Prolif_Invasive_Tumor", markers=kept, programs=("epithelial", prog, "proliferation"),
                 library_size=260, **common),
    ]
    if organ == "breast":
        types.append(CellType("DCIS", markers=kept, programs=("epithelial", prog), library_size=200, **common))
    return types


SHARED_TYPES: dict[str, CellType] = {t.name: t for t in _SHARED}
EPITHELIAL_TYPES: dict[str, CellType] = {t.name: t for t in _EPITHELIA}


def all_programs() -> dict[str, tuple[str, ...]]:
    out = dict(PROGRAMS)
    for organ, genes in TUMOUR_PROGRAMS.items():
        out[f"tumour_{organ}"] = genes
    return out
