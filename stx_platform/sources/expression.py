"""Per-cell expression from decoded transcripts, vectorised.

HEST publishes Xenium expression only as 100 um pseudo-spots, so one vector per nucleus is
rebuilt from ``transcripts/<id>_transcripts.parquet``: each transcript goes to its cell by
``cell_id`` (optionally only those over the nucleus), or by point-in-polygon of its H&E
position against the nucleus polygons; low-quality decodings (qv < 20, as Xenium's own
matrix) and control features are dropped. Ids and gene names are dictionary-encoded once, so
the work is a few passes over integer arrays however many transcripts there are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import shapely

from stx_platform.sources.features import UNASSIGNED_IDS, as_text, gene_mask

MIN_QV = 20.0


@dataclass
class AssignmentStats:
    transcripts: int
    kept: int
    low_qv: int
    controls: int
    unassigned: int
    outside_nuclei: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(integer codes per row, dictionary values as text); nulls get code -1."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    idx = col.indices.to_numpy(zero_copy_only=False)
    if col.null_count:
        idx = np.where(col.is_null().to_numpy(zero_copy_only=False), -1, idx)
    return idx.astype(np.int64), as_text(col.dictionary.to_numpy(zero_copy_only=False))


def feature_columns(feature_names, feature_flags=None, keep_controls: bool = False) -> tuple[list[str], np.ndarray]:
    """Gene list (in first-seen dictionary order) and, per dictionary entry, its gene column or -1."""
    mask = np.ones(len(feature_names), bool) if keep_controls else gene_mask(feature_names, is_gene=feature_flags)
    col = np.full(len(feature_names), -1, np.int64)
    col[mask] = np.arange(mask.sum())
    return [str(n) for n in np.asarray(feature_names, dtype=object)[mask]], col


def cell_by_gene(transcripts: pa.Table, cell_ids: pd.Index, *, genes: list[str] | None = None,
                 min_qv: float = MIN_QV, mode: str = "cell_id", nuclei=None, he_xy: tuple[str, str] = ("he_x", "he_y"),
                 keep_controls: bool = False) -> tuple[sp.csr_matrix, list[str], AssignmentStats]:
    """Count transcripts per (cell, gene).

    ``transcripts`` needs ``feature_name`` and, by mode: ``cell_id`` ("cell_id"), plus
    ``overlaps_nucleus`` ("nucleus"), or the H&E coordinates ``he_xy`` ("polygon", with
    ``nuclei`` a shapely array aligned with ``cell_ids``). ``qv`` is used when present.
    ``keep_controls`` counts control features too (as Xenium's own cell_feature_matrix does).
    Returns a CSR matrix (len(cell_ids) x genes), the gene names and what was dropped.
    """
    n_tx = transcripts.num_rows
    fcodes, fnames = _codes(transcripts.column("feature_name"))
    flags = None
    if "is_gene" in transcripts.column_names:
        # is_gene is per transcript; reduce it to one flag per feature name
        isg = transcripts.column("is_gene").to_numpy(zero_copy_only=False).astype(bool)
        flags = np.zeros(len(fnames), bool)
        flags[fcodes[isg]] = True
    gene_names, fcol = feature_columns(fnames, flags, keep_controls)
    if genes is not None:
        pos = pd.Index(gene_names).get_indexer(genes)
        remap = np.full(len(gene_names), -1, np.int64)
        remap[pos[pos >= 0]] = np.flatnonzero(pos >= 0)
        fcol = np.where(fcol >= 0, remap[np.maximum(fcol, 0)], -1)
        gene_names = list(genes)
    gcol = np.where(fcodes >= 0, fcol[np.maximum(fcodes, 0)], -1)

    keep = gcol >= 0
    n_ctrl = int((~keep).sum())
    if "qv" in transcripts.column_names and min_qv is not None:
        qv = transcripts.column("qv").to_numpy(zero_copy_only=False)
        ok = np.nan_to_num(qv, nan=-1.0) >= min_qv
        n_low = int((keep & ~ok).sum())
        keep &= ok
    else:
        n_low = 0

    outside = 0
    if mode in ("cell_id", "nucleus"):
        ccodes, cnames = _codes(transcripts.column("cell_id"))
        row_of_code = pd.Index(cell_ids).get_indexer(pd.Index(cnames))
        row_of_code[np.isin(cnames, UNASSIGNED_IDS)] = -1
        rows = np.where(ccodes >= 0, row_of_code[np.maximum(ccodes, 0)], -1)
        if mode == "nucleus":
            ov = transcripts.column("overlaps_nucleus").to_numpy(zero_copy_only=False).astype(bool)
            outside = int((keep & (rows >= 0) & ~ov).sum())
            rows = np.where(ov, rows, -1)
    elif mode == "polygon":
        if nuclei is None:
            raise ValueError("mode='polygon' needs the nucleus polygons")
        rows = np.full(n_tx, -1, np.int64)
        sel = np.flatnonzero(keep)
        x = transcripts.column(he_xy[0]).to_numpy(zero_copy_only=False)[sel]
        y = transcripts.column(he_xy[1]).to_numpy(zero_copy_only=False)[sel]
        tree = shapely.STRtree(nuclei)
        pt_i, poly_i = tree.query(shapely.points(x, y), predicate="within")
        rows[sel[pt_i]] = poly_i
    else:
        raise ValueError(f"unknown assignment mode {mode!r}")
    n_unassigned = int((keep & (rows < 0)).sum()) - outside
    keep &= rows >= 0
    r, c = rows[keep], gcol[keep]
    mat = sp.coo_matrix((np.ones(len(r), np.int32), (r, c)), shape=(len(cell_ids), len(gene_names))).tocsr()
    mat.sum_duplicates()
    stats = AssignmentStats(n_tx, int(keep.sum()), n_low, n_ctrl, n_unassigned, outside)
    return mat, gene_names, stats
