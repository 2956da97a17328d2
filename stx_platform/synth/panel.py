"""A Xenium-like gene panel of real human gene symbols, plus Xenium's control features.

The panel is the union of every cell type's canonical markers and shared programs (see
``celltypes``) and a block of genes that no synthetic type regulates (uninformative for
typing, as most of a real panel is for any one question); many of them are nonetheless
listed as markers in PanglaoDB / CellMarker, as they are on real panels. Controls follow
Xenium's naming: ``NegControlProbe_*``, ``NegControlCodeword_*``, ``BLANK_*`` (older
bundles), ``UnassignedCodeword_*`` (newer bundles); readers must drop them.
"""

from __future__ import annotations

from functools import lru_cache

from stx_platform.synth.celltypes import (
    AMBIGUOUS,
    EPITHELIAL_TYPES,
    SHARED_TYPES,
    all_programs,
)

#: Real genes, present on commercial Xenium panels, that no synthetic type regulates.
UNINFORMATIVE: tuple[str, ...] = (
    "ADAM9", "ADGRE5", "ADH1B", "AHSP", "AKR1C1", "AKR1C3", "ALDH1A3", "ANGPT2", "ANKRD28", "APOBEC3A",
    "APOBEC3B", "AQP3", "AVPR1A", "BACE2", "BASP1", "BTNL9", "CAVIN2", "CCDC6", "CCL20", "CCL8",
    "CCPG1", "CD274", "CD69", "CD9", "CDC42EP1", "CLCA2", "CLECL1", "CLIC6", "CRHBP", "CRISPLD2",
    "CSF3", "CTH", "CTLA4", "CTSG", "CX3CR1", "CXCL12", "CXCL16", "CXCL5", "CYP1A1", "CYTIP",
    "DAPK3", "DMKN", "DNAAF1", "DNTTIP1", "DST", "DUSP2", "DUSP5", "EDN1", "EDNRB", "EIF4EBP1",
    "ELF5", "ENAH", "ERN1", "ESM1", "FBLIM1", "FCER1A", "FGL2", "FLNB", "FOXC2", "FSTL3",
    "GJB2", "GLIPR1", "GPR183", "HAVCR2",
)

#: Genes that the tissue model regulates but no single type marks (tumour programs use them too).
_EXTRA_MODEL_GENES: tuple[str, ...] = ("TIMP1", "MET", "CDKN2A", "L1CAM", "MMP7", "HPN", "EGLN3", "CD70", "PLIN2")


@lru_cache(maxsize=1)
def gene_panel() -> tuple[str, ...]:
    """The panel's gene symbols, in a fixed order: regulated genes first, then uninformative ones."""
    seen: dict[str, None] = {}
    for t in list(SHARED_TYPES.values()) + list(EPITHELIAL_TYPES.values()):
        for g in t.markers:
            seen.setdefault(g, None)
    for genes in all_programs().values():
        for g in genes:
            seen.setdefault(g, None)
    for g in _EXTRA_MODEL_GENES + UNINFORMATIVE:
        seen.setdefault(g, None)
    assert not AMBIGUOUS[0].markers
    return tuple(seen)


def control_features(style: str = "modern") -> tuple[str, ...]:
    """Xenium control features; ``style`` 'v1' uses BLANK_ codewords, 'modern' UnassignedCodeword_."""
    probes = tuple(f"NegControlProbe_{n}" for n in (
        "00004", "00009", "00012", "00013", "00014", "00016", "00017", "00019", "00022", "00024",
        "00025", "00031", "00033", "00034", "00035", "00039", "00041", "00042", "00048", "00062"))
    codewords = tuple(f"NegControlCodeword_{500 + i:04d}" for i in range(41))
    if style == "v1":
        blanks = tuple(f"BLANK_{i:04d}" for i in range(1, 160))
    else:
        blanks = tuple(f"UnassignedCodeword_{i:04d}" for i in range(60))
    return probes + codewords + blanks


def feature_type_of(name: str) -> str:
    """The ``feature_type`` string Xenium's cell_feature_matrix.h5 gives a feature of this name."""
    if name.startswith("NegControlProbe_"):
        return "Negative Control Probe"
    if name.startswith("NegControlCodeword_"):
        return "Negative Control Codeword"
    if name.startswith("BLANK_"):
        return "Blank Codeword"
    if name.startswith("UnassignedCodeword_"):
        return "Unassigned Codeword"
    return "Gene Expression"
