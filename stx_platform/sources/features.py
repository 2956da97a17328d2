"""Which Xenium features are genes and which are controls, and how cell ids are normalised.

Xenium panels carry negative-control probes, negative-control / blank / unassigned /
deprecated codewords and (newer panels) genomic / intergenic controls beside the genes.
Where a file says so explicitly we trust it (``feature_type`` in cell_feature_matrix.h5,
``is_gene`` / ``codeword_category`` in transcripts.parquet); otherwise we go by the names
10x gives them (10x Xenium output documentation; HEST keeps them all in ``st/*.h5ad``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CONTROL_PREFIXES: tuple[str, ...] = (
    "NegControlProbe_", "NegControlCodeword_", "BLANK_", "Blank-", "antisense_", "UnassignedCodeword_",
    "DeprecatedCodeword_", "Intergenic_Region_", "IntergenicRegion_", "GenomicControl_", "Genomic_Control_",
)
GENE_FEATURE_TYPE = "Gene Expression"
#: ``transcripts.parquet`` cell_id values that mean "not in any cell"
UNASSIGNED_IDS = ("UNASSIGNED", "-1", "")


def as_text(values) -> np.ndarray:
    """Strings from str / bytes / int / categorical arrays (bytes decoded as UTF-8)."""
    arr = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8").astype(object)
    if arr.dtype.kind in "iu":
        return arr.astype(str).astype(object)
    if arr.dtype.kind == "f":
        out = np.where(np.isnan(arr), -1, arr).astype(np.int64).astype(str).astype(object)
        return out
    if arr.dtype.kind == "U":
        return arr.astype(object)
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr], dtype=object)


def is_control(names) -> np.ndarray:
    """True for control features, by name."""
    names = as_text(names)
    return np.array([n.startswith(CONTROL_PREFIXES) for n in names], dtype=bool)


def gene_mask(names, feature_type=None, is_gene=None) -> np.ndarray:
    """True for real genes: explicit annotations first, names otherwise."""
    if is_gene is not None:
        return np.asarray(is_gene, dtype=bool)
    if feature_type is not None:
        return as_text(feature_type) == GENE_FEATURE_TYPE
    return ~is_control(names)


def normalise_cell_ids(values) -> pd.Index:
    """Cell ids as a string Index (Xenium writes int, str or bytes depending on the version)."""
    return pd.Index(as_text(values), dtype=object)
