"""Per-cell expression from transcripts: exact counts on hand-made tables."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import shapely

from stx_platform.sources.expression import cell_by_gene
from stx_platform.sources.features import gene_mask, is_control, normalise_cell_ids


def _table(**cols):
    return pa.table(cols)


def test_counts_by_cell_id_drop_low_qv_controls_and_unassigned():
    t = _table(
        feature_name=["CD3E", "CD3E", "EPCAM", "NegControlProbe_00004", "BLANK_0001", "EPCAM", "CD3E", "EPCAM"],
        cell_id=["c1", "c1", "c2", "c1", "c2", "UNASSIGNED", "c2", "c1"],
        qv=[30.0, 35.0, 25.0, 30.0, 40.0, 30.0, 10.0, 20.0],
    )
    mat, genes, stats = cell_by_gene(t, pd.Index(["c1", "c2", "c3"]))
    got = pd.DataFrame(mat.toarray(), index=["c1", "c2", "c3"], columns=genes)
    assert set(genes) == {"CD3E", "EPCAM"}  # controls never become genes
    assert got.loc["c1", "CD3E"] == 2 and got.loc["c1", "EPCAM"] == 1  # qv 20 is kept (>= 20)
    assert got.loc["c2", "EPCAM"] == 1 and got.loc["c2", "CD3E"] == 0  # qv 10 dropped
    assert got.loc["c3"].sum() == 0
    assert (stats.transcripts, stats.kept, stats.low_qv, stats.controls, stats.unassigned) == (8, 4, 1, 2, 1)


def test_bytes_and_integer_ids_and_gene_order():
    t = _table(feature_name=pa.array([b"B", b"A", b"B"], pa.binary()), cell_id=pa.array([2, 2, -1], pa.int32()))
    mat, genes, _ = cell_by_gene(t, normalise_cell_ids(np.array([1, 2])), genes=["A", "B", "Z"])
    assert genes == ["A", "B", "Z"]
    assert mat.toarray().tolist() == [[0, 0, 0], [1, 1, 0]]


def test_nucleus_mode_keeps_only_nuclear_transcripts():
    t = _table(feature_name=["A", "A", "A"], cell_id=["x", "x", "x"], overlaps_nucleus=pa.array([1, 0, 1], pa.uint8()))
    mat, _, stats = cell_by_gene(t, pd.Index(["x"]), mode="nucleus")
    assert mat.toarray().tolist() == [[2]] and stats.outside_nuclei == 1


def test_polygon_mode_assigns_by_position():
    squares = np.array([shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10)])
    t = _table(feature_name=["A", "B", "A", "A"], he_x=[5.0, 25.0, 26.0, 15.0], he_y=[5.0, 5.0, 5.0, 5.0])
    mat, genes, stats = cell_by_gene(t, pd.Index(["p", "q"]), mode="polygon", nuclei=squares)
    got = pd.DataFrame(mat.toarray(), index=["p", "q"], columns=genes)
    assert got.loc["p", "A"] == 1 and got.loc["q", "A"] == 1 and got.loc["q", "B"] == 1
    assert stats.unassigned == 1  # the point between the squares


def test_is_gene_column_overrides_names():
    t = _table(feature_name=["GENE1", "Weird_control"], cell_id=["a", "a"], is_gene=[True, False])
    _, genes, _ = cell_by_gene(t, pd.Index(["a"]))
    assert genes == ["GENE1"]


def test_control_names_and_feature_types():
    names = ["CD3E", "NegControlProbe_00004", "NegControlCodeword_0500", "BLANK_0001", "UnassignedCodeword_0001",
             "DeprecatedCodeword_0002", "antisense_PROM1", "Intergenic_Region_7"]
    assert is_control(names).tolist() == [False] + [True] * 7
    ft = ["Gene Expression", "Negative Control Probe", "Gene Expression"]
    assert gene_mask(["a", "b", "c"], feature_type=ft).tolist() == [True, False, True]


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="assignment mode"):
        cell_by_gene(_table(feature_name=["A"], cell_id=["a"]), pd.Index(["a"]), mode="nearest")


@pytest.mark.parametrize("mode", ["cell_id", "nucleus", "polygon"])
def test_streaming_row_groups_gives_the_whole_file_counts(tmp_path, mode):
    """The readers count a file a row group at a time; genes first seen in a late row group, ids
    unassigned in some groups and all three modes give the whole-table matrix and stats."""
    import pyarrow.parquet as pq

    from stx_platform.sources.expression import count_parquet

    rng = np.random.default_rng(0)
    n, cells = 5000, pd.Index([f"c{i}" for i in range(40)])
    genes = np.array(["G0", "G1", "G2", "NegControlProbe_1", "LATE"])
    feat = genes[rng.integers(0, 4, n)]
    feat[-300:] = "LATE"                                  # only in the last row groups
    cid = np.array(list(cells) + ["UNASSIGNED"])[rng.integers(0, 41, n)]
    centres = rng.uniform(0, 100, (len(cells), 2))
    nuclei = shapely.buffer(shapely.points(centres), 3.0)
    xy = centres[rng.integers(0, len(cells), n)] + rng.normal(0, 2.5, (n, 2))
    t = _table(feature_name=feat, cell_id=cid, qv=rng.uniform(10, 40, n).astype(np.float32),
               overlaps_nucleus=pa.array(rng.integers(0, 2, n), pa.uint8()), he_x=xy[:, 0], he_y=xy[:, 1])
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=700)
    kw = {"mode": mode, "nuclei": nuclei if mode == "polygon" else None}
    whole, gw, sw = cell_by_gene(t, cells, **kw)
    streamed, gs, ss = count_parquet(str(tmp_path / "t.parquet"), t.column_names, cells, batch_rows=700, **kw)
    assert gs == gw and "LATE" in gs and "NegControlProbe_1" not in gs
    assert (whole != streamed).nnz == 0 and whole.sum() > 0 and ss == sw


def _dict_batch(feat: list, cid: list, qv: np.ndarray, rng) -> pa.RecordBatch:
    """A batch whose string columns carry their own dictionary, in a shuffled order with an unused
    entry, as Parquet row groups (or Arrow chunks) written apart do; None is a null."""
    def encode(values, extra):
        vocab = sorted({v for v in values if v is not None} | {extra})
        vocab = [vocab[i] for i in rng.permutation(len(vocab))]
        pos = {v: i for i, v in enumerate(vocab)}
        idx = pa.array([None if v is None else pos[v] for v in values], pa.int32())
        return pa.DictionaryArray.from_arrays(idx, pa.array(vocab))
    return pa.RecordBatch.from_arrays([encode(feat, "UNUSED_GENE"), encode(cid, "c_unused"), pa.array(qv)],
                                      names=["feature_name", "cell_id", "qv"])


def test_many_small_batches_with_their_own_dictionaries_give_the_one_batch_matrix():
    """Counting in 60 odd-sized batches (dictionaries differing per batch, null ids and feature
    names, NaN qv, the same (cell, gene) pairs in many batches, a buffer smaller than a batch)
    gives the matrix and stats of one batch, and both equal a count done row by row."""
    from collections import Counter

    from stx_platform.sources.expression import TranscriptCounter

    rng = np.random.default_rng(7)
    n, cells = 6000, pd.Index([f"c{i}" for i in range(25)])
    names = ["G0", "G1", "G2", "G3", "NegControlProbe_1", None]
    ids = list(cells) + ["UNASSIGNED", "stranger", None]
    feat = [names[i] for i in rng.choice(len(names), n, p=[.3, .3, .2, .1, .05, .05])]
    cid = [ids[i] for i in rng.integers(0, len(ids), n)]
    qv = rng.uniform(10, 40, n).astype(np.float32)
    qv[rng.random(n) < 0.03] = np.nan

    ref, stats = Counter(), Counter()
    for f, c, q in zip(feat, cid, qv):
        if f is None or f.startswith("NegControl"):
            stats["controls"] += 1
        elif not q >= 20:
            stats["low_qv"] += 1
        elif c is None or c not in cells:
            stats["unassigned"] += 1
        else:
            ref[c, f] += 1
    genes = ["G0", "G1", "G2", "G3", "UNUSED_GENE"]
    want = pd.DataFrame(0, index=cells, columns=genes)
    for (c, f), k in ref.items():
        want.loc[c, f] = k

    def count(bounds, buffer_rows):
        counter = TranscriptCounter(cells, buffer_rows=buffer_rows)
        for a, b in zip(bounds[:-1], bounds[1:]):
            counter.add(_dict_batch(feat[a:b], cid[a:b], qv[a:b], rng))
        mat, g, st = counter.result()
        return pd.DataFrame(mat.toarray(), index=cells, columns=g)[genes], st

    cuts = np.sort(rng.choice(np.arange(1, n), 59, replace=False))
    one, st_one = count([0, n], 1 << 23)
    many, st_many = count([0, *cuts, n], 97)         # batches span buffer fills
    assert (one.to_numpy() == want.to_numpy()).all() and (many.to_numpy() == want.to_numpy()).all()
    assert want.to_numpy().sum() > 3000 and want.to_numpy()[:, :4].min() > 0    # pairs repeat across batches
    assert st_one == st_many
    assert (st_one.transcripts, st_one.controls, st_one.low_qv, st_one.unassigned) == (
        n, stats["controls"], stats["low_qv"], stats["unassigned"])
    assert st_one.kept == sum(ref.values())
