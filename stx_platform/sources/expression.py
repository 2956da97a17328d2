"""Per-cell expression from decoded transcripts, vectorised.

HEST publishes Xenium expression only as 100 um pseudo-spots, so one vector per nucleus is
rebuilt from ``transcripts/<id>_transcripts.parquet``: each transcript goes to its cell by
``cell_id`` (optionally only those over the nucleus), or by point-in-polygon of its H&E
position against the nucleus polygons; low-quality decodings (qv < 20, as Xenium's own
matrix) and control features are dropped. Ids and gene names are dictionary-encoded per batch,
so the work is a few passes over integer arrays, and files are read a row group at a time
(:func:`count_parquet`): memory holds the cell x gene matrix, not the transcripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
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


class TranscriptCounter:
    """Counts transcripts per (cell, gene) one batch at a time, so a file is never held whole:
    each batch (a Parquet row group) becomes a small sparse matrix, added to the running total
    every 8 batches. Memory follows the cell x gene matrix and one batch, not the transcript
    count (bench/expression.py measures both). Genes get columns in first-seen order.

    ``mode``: "cell_id" (by the transcript's ``cell_id``), "nucleus" (also ``overlaps_nucleus``)
    or "polygon" (the H&E position ``he_xy`` within ``nuclei``, aligned with ``cell_ids``).
    """

    def __init__(self, cell_ids: pd.Index, *, genes: list[str] | None = None, min_qv: float | None = MIN_QV,
                 mode: str = "cell_id", nuclei=None, he_xy: tuple[str, str] = ("he_x", "he_y"),
                 keep_controls: bool = False):
        if mode not in ("cell_id", "nucleus", "polygon"):
            raise ValueError(f"unknown assignment mode {mode!r}")
        if mode == "polygon" and nuclei is None:
            raise ValueError("mode='polygon' needs the nucleus polygons")
        self.cell_ids = pd.Index(cell_ids)
        self.fixed = list(genes) if genes is not None else None
        self.gene_col: dict[str, int] = {g: i for i, g in enumerate(self.fixed or [])}
        self.min_qv, self.mode, self.he_xy, self.keep_controls = min_qv, mode, he_xy, keep_controls
        self.tree = shapely.STRtree(nuclei) if mode == "polygon" else None
        self.stats = AssignmentStats(0, 0, 0, 0, 0, 0)
        self._parts: list[sp.csr_matrix] = []

    def _columns(self, fnames: np.ndarray, flags: np.ndarray | None) -> np.ndarray:
        """Per dictionary entry of this batch: its gene column, or -1 (a control, or not listed)."""
        is_gene = np.ones(len(fnames), bool) if self.keep_controls else gene_mask(fnames, is_gene=flags)
        col = np.full(len(fnames), -1, np.int64)
        for i in np.flatnonzero(is_gene):
            name = str(fnames[i])
            c = self.gene_col.get(name)
            if c is None and self.fixed is None:
                c = self.gene_col[name] = len(self.gene_col)
            col[i] = -1 if c is None else c
        return col

    def add(self, batch: pa.Table | pa.RecordBatch) -> TranscriptCounter:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        n_tx = batch.num_rows
        fcodes, fnames = _codes(batch.column("feature_name"))
        flags = None
        if "is_gene" in batch.column_names:
            # is_gene is per transcript; reduce it to one flag per feature name
            isg = batch.column("is_gene").to_numpy(zero_copy_only=False).astype(bool)
            flags = np.zeros(len(fnames), bool)
            flags[fcodes[isg]] = True
        fcol = self._columns(fnames, flags)
        gcol = np.where(fcodes >= 0, fcol[np.maximum(fcodes, 0)], -1)
        keep = gcol >= 0
        n_ctrl = int((~keep).sum())
        n_low = 0
        if "qv" in batch.column_names and self.min_qv is not None:
            qv = batch.column("qv").to_numpy(zero_copy_only=False)
            ok = np.nan_to_num(qv, nan=-1.0) >= self.min_qv
            n_low = int((keep & ~ok).sum())
            keep &= ok

        outside = 0
        if self.mode in ("cell_id", "nucleus"):
            ccodes, cnames = _codes(batch.column("cell_id"))
            row_of_code = self.cell_ids.get_indexer(pd.Index(cnames))
            row_of_code[np.isin(cnames, UNASSIGNED_IDS)] = -1
            rows = np.where(ccodes >= 0, row_of_code[np.maximum(ccodes, 0)], -1)
            if self.mode == "nucleus":
                ov = batch.column("overlaps_nucleus").to_numpy(zero_copy_only=False).astype(bool)
                outside = int((keep & (rows >= 0) & ~ov).sum())
                rows = np.where(ov, rows, -1)
        else:
            rows = np.full(n_tx, -1, np.int64)
            sel = np.flatnonzero(keep)
            x = batch.column(self.he_xy[0]).to_numpy(zero_copy_only=False)[sel]
            y = batch.column(self.he_xy[1]).to_numpy(zero_copy_only=False)[sel]
            pt_i, poly_i = self.tree.query(shapely.points(x, y), predicate="within")
            rows[sel[pt_i]] = poly_i
        n_unassigned = int((keep & (rows < 0)).sum()) - outside
        keep &= rows >= 0
        r, c = rows[keep], gcol[keep]
        if len(r):
            width = max(len(self.gene_col), int(c.max()) + 1)
            part = sp.coo_matrix((np.ones(len(r), np.int32), (r, c)), shape=(len(self.cell_ids), width)).tocsr()
            part.sum_duplicates()
            self._parts.append(part)
            if len(self._parts) >= 8:      # keep memory to the matrix, not to the batches
                self._parts = [self._sum()]
        st = self.stats
        st.transcripts += n_tx
        st.kept += int(keep.sum())
        st.low_qv += n_low
        st.controls += n_ctrl
        st.unassigned += n_unassigned
        st.outside_nuclei += outside
        return self

    def _sum(self) -> sp.csr_matrix:
        shape = (len(self.cell_ids), len(self.gene_col))
        total = sp.csr_matrix(shape, dtype=np.int32)
        for part in self._parts:
            part.resize(shape)
            total = total + part
        return total

    def result(self) -> tuple[sp.csr_matrix, list[str], AssignmentStats]:
        """(CSR counts len(cell_ids) x genes, the gene names, what was dropped)."""
        mat = self._sum()
        mat.sum_duplicates()
        names = [None] * len(self.gene_col)
        for g, i in self.gene_col.items():
            names[i] = g
        return mat.astype(np.int32), names, self.stats


def cell_by_gene(transcripts: pa.Table, cell_ids: pd.Index, *, genes: list[str] | None = None,
                 min_qv: float = MIN_QV, mode: str = "cell_id", nuclei=None, he_xy: tuple[str, str] = ("he_x", "he_y"),
                 keep_controls: bool = False) -> tuple[sp.csr_matrix, list[str], AssignmentStats]:
    """Count transcripts per (cell, gene) of a whole table (see :class:`TranscriptCounter`).

    ``transcripts`` needs ``feature_name`` and, by mode: ``cell_id`` ("cell_id"), plus
    ``overlaps_nucleus`` ("nucleus"), or the H&E coordinates ``he_xy`` ("polygon", with
    ``nuclei`` a shapely array aligned with ``cell_ids``). ``qv`` is used when present.
    ``keep_controls`` counts control features too (as Xenium's own cell_feature_matrix does).
    Returns a CSR matrix (len(cell_ids) x genes), the gene names and what was dropped.
    """
    counter = TranscriptCounter(cell_ids, genes=genes, min_qv=min_qv, mode=mode, nuclei=nuclei, he_xy=he_xy,
                                keep_controls=keep_controls)
    return counter.add(transcripts).result()


def count_parquet(f, columns: list[str], cell_ids: pd.Index, batch_rows: int = 1 << 20, **kw
                  ) -> tuple[sp.csr_matrix, list[str], AssignmentStats]:
    """:func:`cell_by_gene` over an open Parquet file read ``batch_rows`` at a time."""
    counter = TranscriptCounter(cell_ids, **kw)
    pf = pq.ParquetFile(f, read_dictionary=[c for c in ("cell_id", "feature_name") if c in columns])
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        counter.add(batch)
    return counter.result()
