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


def _codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(int32 code per row into the dictionary, the dictionary); nulls get code -1.
    ``col`` is one chunk's worth (a batch column); strings are dictionary-encoded here."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    ind = pc.if_else(col.is_null(), -1, col.indices) if col.null_count else col.indices
    return ind.to_numpy(zero_copy_only=False).astype(np.int32, copy=False), col.dictionary


def _gather(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table[codes]`` as int32, with -1 where the code is -1 (a null)."""
    return np.append(table, -1).astype(np.int32, copy=False)[codes]


def _lookup(cache: dict, dictionary: pa.Array, fn) -> np.ndarray:
    """``fn(dictionary values as text)``, reused while batches share a dictionary (the batches of
    one Parquet row group do): converting 500k cell ids to Python strings per batch is the slow part."""
    hit = cache.get("dict")
    if hit is None or not (hit is dictionary or (len(hit) == len(dictionary) and hit.equals(dictionary))):
        cache["dict"], cache["value"] = dictionary, fn(as_text(dictionary.to_numpy(zero_copy_only=False)))
    return cache["value"]


class TranscriptCounter:
    """Counts transcripts per (cell, gene) one batch at a time, so a file is never held whole.

    Each batch (a Parquet row group or a slice of one) is reduced at once to int32 row and gene
    codes of its kept transcripts, which go into one fixed buffer of ``buffer_rows`` pairs; a
    full buffer is summed into the running int32 CSR matrix. Memory is the cell x gene matrix
    (twice, while summing), the buffer and one batch, whatever the transcript count: nothing
    small outlives its batch, so the allocator can reuse it (bench/expression.py measures it).
    Genes get columns in first-seen order.

    ``mode``: "cell_id" (by the transcript's ``cell_id``), "nucleus" (also ``overlaps_nucleus``)
    or "polygon" (the H&E position ``he_xy`` within ``nuclei``, aligned with ``cell_ids``).
    """

    def __init__(self, cell_ids: pd.Index, *, genes: list[str] | None = None, min_qv: float | None = MIN_QV,
                 mode: str = "cell_id", nuclei=None, he_xy: tuple[str, str] = ("he_x", "he_y"),
                 keep_controls: bool = False, buffer_rows: int = 1 << 22):
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
        self._total: sp.csr_matrix | None = None
        self._pairs = np.empty((2, max(1, buffer_rows)), np.int32)     # (row, gene column) per kept transcript
        self._fill = 0
        self._cells_cache: dict = {}

    def _columns(self, fnames: np.ndarray, flags: np.ndarray | None) -> np.ndarray:
        """Per dictionary entry of this batch: its gene column, or -1 (a control, or not listed)."""
        is_gene = np.ones(len(fnames), bool) if self.keep_controls else gene_mask(fnames, is_gene=flags)
        col = np.full(len(fnames), -1, np.int32)
        for i in np.flatnonzero(is_gene):
            name = str(fnames[i])
            c = self.gene_col.get(name)
            if c is None and self.fixed is None:
                c = self.gene_col[name] = len(self.gene_col)
            col[i] = -1 if c is None else c
        return col

    def _rows_of(self, cnames: np.ndarray) -> np.ndarray:
        """Per cell-id dictionary entry: its row, or -1 (unknown or an 'unassigned' id)."""
        rows = self.cell_ids.get_indexer(pd.Index(cnames)).astype(np.int32)
        rows[np.isin(cnames, UNASSIGNED_IDS)] = -1
        return rows

    def add(self, batch: pa.Table | pa.RecordBatch) -> TranscriptCounter:
        """Count one batch; a table is taken a chunk at a time (no copy of it is made)."""
        if isinstance(batch, pa.Table):
            for b in batch.to_batches(max_chunksize=1 << 20):
                self._add(b)
            return self
        return self._add(batch)

    def _add(self, batch: pa.RecordBatch) -> TranscriptCounter:
        n_tx = batch.num_rows
        names = batch.schema.names
        fcodes, fdict = _codes(batch.column(names.index("feature_name")))
        fnames = as_text(fdict.to_numpy(zero_copy_only=False))
        flags = None
        if "is_gene" in names:
            # is_gene is per transcript; reduce it to one flag per feature name
            isg = batch.column(names.index("is_gene")).to_numpy(zero_copy_only=False).astype(bool)
            flags = np.zeros(len(fnames), bool)
            flags[fcodes[isg]] = True
        gcol = _gather(self._columns(fnames, flags), fcodes)
        del fcodes
        keep = gcol >= 0
        n_ctrl = n_tx - int(np.count_nonzero(keep))
        n_low = 0
        if "qv" in names and self.min_qv is not None:
            qv = batch.column(names.index("qv")).to_numpy(zero_copy_only=False)
            ok = qv >= self.min_qv
            if self.min_qv <= -1.0:                # NaN counts as qv -1
                ok |= np.isnan(qv)
            n_low = int(np.count_nonzero(keep & ~ok))
            keep &= ok
            del qv, ok

        outside = 0
        if self.mode in ("cell_id", "nucleus"):
            ccodes, cdict = _codes(batch.column(names.index("cell_id")))
            row_of_code = _lookup(self._cells_cache, cdict, self._rows_of)
            rows = _gather(row_of_code, ccodes)
            del ccodes
            if self.mode == "nucleus":
                ov = batch.column(names.index("overlaps_nucleus")).to_numpy(zero_copy_only=False).astype(bool)
                outside = int(np.count_nonzero(keep & (rows >= 0) & ~ov))
                rows[~ov] = -1
        else:
            rows = np.full(n_tx, -1, np.int32)
            sel = np.flatnonzero(keep)
            x = batch.column(names.index(self.he_xy[0])).to_numpy(zero_copy_only=False)[sel]
            y = batch.column(names.index(self.he_xy[1])).to_numpy(zero_copy_only=False)[sel]
            pt_i, poly_i = self.tree.query(shapely.points(x, y), predicate="within")
            rows[sel[pt_i]] = poly_i
        assigned = rows >= 0
        n_unassigned = int(np.count_nonzero(keep & ~assigned)) - outside
        keep &= assigned
        r, c = rows[keep], gcol[keep]
        del rows, gcol
        self._push(r, c)
        st = self.stats
        st.transcripts += n_tx
        st.kept += len(r)
        st.low_qv += n_low
        st.controls += n_ctrl
        st.unassigned += n_unassigned
        st.outside_nuclei += outside
        return self

    def _push(self, r: np.ndarray, c: np.ndarray) -> None:
        """Append (row, column) pairs to the buffer, summing it into the matrix whenever it fills."""
        done, cap = 0, self._pairs.shape[1]
        while done < len(r):
            k = min(cap - self._fill, len(r) - done)
            self._pairs[0, self._fill:self._fill + k] = r[done:done + k]
            self._pairs[1, self._fill:self._fill + k] = c[done:done + k]
            self._fill += k
            done += k
            if self._fill == cap:
                self._merge()

    def _merge(self) -> None:
        """Sum the buffered pairs (duplicates added up) into the running matrix; empty the buffer."""
        shape = (len(self.cell_ids), len(self.gene_col))
        n, self._fill = self._fill, 0
        if n == 0:
            return
        rows, cols = self._pairs[0, :n], self._pairs[1, :n]
        part = sp.coo_matrix((np.ones(n, np.int32), (rows, cols)), shape=shape).tocsr()
        if self._total is None:
            self._total = part
        else:
            self._total.resize(shape)
            self._total = self._total + part

    def result(self) -> tuple[sp.csr_matrix, list[str], AssignmentStats]:
        """(CSR int32 counts len(cell_ids) x genes, the gene names, what was dropped)."""
        self._merge()
        shape = (len(self.cell_ids), len(self.gene_col))
        mat = sp.csr_matrix(shape, dtype=np.int32) if self._total is None else self._total
        mat.resize(shape)
        mat.sum_duplicates()
        names = [None] * len(self.gene_col)
        for g, i in self.gene_col.items():
            names[i] = g
        return mat.astype(np.int32, copy=False), names, self.stats


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
    """:func:`cell_by_gene` over an open Parquet file read ``batch_rows`` at a time.

    Row groups are read one by one: a reader over the whole file pre-buffers every row group's
    column chunks and holds them to the end (130 MB for 16.6M transcripts, growing with them)."""
    counter = TranscriptCounter(cell_ids, **kw)
    pf = pq.ParquetFile(f, read_dictionary=[c for c in ("cell_id", "feature_name") if c in columns])
    for group in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns, row_groups=[group]):
            counter.add(batch)
    return counter.result()
