"""Ground-truth cell annotations: cell id -> fine-grained label -> PanNuke class.

The format follows the 10x breast Xenium supervised annotation export (Janesick et al. 2023,
"Cell_Barcode_Type_Matrices", sheet "Xenium R1 Fig1-5 (supervised)": columns ``Barcode`` and
``Cluster``), as CSV or XLSX. A ``Class`` column, when present, gives the PanNuke class; else
the fine label is mapped with ``FINE_TO_CLASS`` (the 10x breast labels), and labels it does not
know become Unknown.
"""

from __future__ import annotations

import io

import pandas as pd

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.sources.features import normalise_cell_ids
from stx_platform.taxonomy import (
    CONNECTIVE,
    EPITHELIAL,
    INFLAMMATORY,
    LABEL_CLASSES,
    NEOPLASTIC,
    UNKNOWN,
)

#: The 10x breast (Janesick 2023) supervised labels mapped onto PanNuke classes.
FINE_TO_CLASS: dict[str, str] = {
    "DCIS_1": NEOPLASTIC, "DCIS_2": NEOPLASTIC, "Invasive_Tumor": NEOPLASTIC, "Prolif_Invasive_Tumor": NEOPLASTIC,
    "Myoepi_ACTA2+": EPITHELIAL, "Myoepi_KRT15+": EPITHELIAL,
    "B_Cells": INFLAMMATORY, "CD4+_T_Cells": INFLAMMATORY, "CD8+_T_Cells": INFLAMMATORY,
    "Macrophages_1": INFLAMMATORY, "Macrophages_2": INFLAMMATORY, "Mast_Cells": INFLAMMATORY,
    "LAMP3+_DCs": INFLAMMATORY, "IRF7+_DCs": INFLAMMATORY,
    "Perivascular-Like": CONNECTIVE, "Stromal": CONNECTIVE, "Endothelial": CONNECTIVE,
    "Stromal_&_T_Cell_Hybrid": UNKNOWN, "T_Cell_&_Tumor_Hybrid": UNKNOWN, "Unlabeled": UNKNOWN,
}


def read_ground_truth(url: str, sample_id: str | None = None) -> pd.DataFrame | None:
    """DataFrame indexed by cell id with ``fine_label`` and ``class``; None when the file is absent."""
    if not storage.exists(url):
        return None
    name = url.rsplit("/", 1)[-1]
    try:
        raw = storage.read_bytes(url)
        df = pd.read_excel(io.BytesIO(raw)) if name.endswith((".xlsx", ".xls")) else pd.read_csv(io.BytesIO(raw))
    except Exception as e:
        raise SampleError(sample_id, name, f"not a readable annotation table ({type(e).__name__}: {e})") from None
    missing = [c for c in ("Barcode", "Cluster") if c not in df.columns]
    if missing:
        raise SampleError(sample_id, name, f"missing column(s) {missing}; expected Barcode, Cluster[, Class]")
    if "Class" in df.columns:
        cls = df["Class"].astype(str)
        bad = sorted(set(cls) - set(LABEL_CLASSES))
        if bad:
            raise SampleError(sample_id, name, f"unknown class names {bad}; expected {list(LABEL_CLASSES)}")
    else:
        cls = df["Cluster"].map(FINE_TO_CLASS).fillna(UNKNOWN)
    out = pd.DataFrame({"fine_label": df["Cluster"].astype(str).to_numpy(), "class": cls.to_numpy()},
                       index=normalise_cell_ids(df["Barcode"].to_numpy()))
    out.index.name = "cell_id"
    if not out.index.is_unique:
        raise SampleError(sample_id, name, f"{int(out.index.duplicated().sum())} duplicate barcodes")
    return out
