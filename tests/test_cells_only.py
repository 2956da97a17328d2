"""Label-only inputs: real Xenium output folders of v1 and v3 (../shared/data/real), a folder
without H&E or experiment.xenium, a 10x matrix file and an .h5ad; the organ from metadata; and
`stx label` on them. Expected counts are recomputed here from the files with pandas."""

import shutil

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import SHARED, need

from stx_platform.cli import main
from stx_platform.errors import SampleError
from stx_platform.labels.table import read_label_table
from stx_platform.organs import experiment_organ, organ_from_metadata
from stx_platform.sources import list_samples, read_sample
from stx_platform.sources.cells_only import cell_refs, read_cells

REAL = SHARED / "data" / "real"
V1 = REAL / "xenium_v1_crop"
V3 = REAL / "xenium_v3_outs"


def _matrix_genes(path):
    """Cells x genes of a 10x h5 read directly (features of type Gene Expression only)."""
    with h5py.File(path) as h:
        g = h["matrix"]
        X = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=tuple(g["shape"][:])).T.tocsr()
        names = np.array([n.decode() for n in g["features/name"][:]])
        genes = np.array([t.decode() for t in g["features/feature_type"][:]]) == "Gene Expression"
        cells = [b.decode() for b in g["barcodes"][:]]
    return pd.DataFrame(X[:, genes].toarray(), index=cells, columns=names[genes])


def _transcript_counts(folder, cells):
    """(cell, gene) counts of the transcripts Xenium's matrix would count: genes, qv >= 20."""
    t = pd.read_parquet(folder / "transcripts.parquet")
    gene = t["is_gene"].astype(bool) if "is_gene" in t else ~t["feature_name"].str.contains(
        "^(?:NegControl|BLANK_|UnassignedCodeword|DeprecatedCodeword|Intergenic)", regex=True)
    t = t[gene & (t["qv"] >= 20) & t["cell_id"].isin(cells)]
    return t.groupby(["cell_id", "feature_name"]).size()


def _as_frame(sample):
    X = sample.expression.X
    return pd.DataFrame(X.toarray(), index=sample.expression.obs_names, columns=sample.expression.var_names)


def test_organ_from_run_metadata():
    assert organ_from_metadata("Tissue", "Ovarian_Cancer") == "ovary"
    assert organ_from_metadata("Multi", "Human Prostate Adenocarcinoma (FFPE)") == "prostate"
    assert organ_from_metadata("Human Lymph Node") == "lymph_node"
    assert organ_from_metadata("Mouse FF Brain Hemisphere (Coronal)", None, "") is None
    assert experiment_organ({"panel_tissue_type": "breast", "region_name": "Ovarian_Cancer"}) == "breast"


def test_real_xenium_v1_folder_without_he_or_manifest_reads_for_labelling():
    need(V1)
    s = read_cells(str(V1))
    truth = _matrix_genes(V1 / "cell_feature_matrix.h5")
    assert s.sample_id == "xenium_v1_crop" and s.n_cells == 526 == len(truth)
    got = _as_frame(s)
    assert sorted(got.columns) == sorted(truth.columns) and len(truth.columns) == 27   # 3 controls dropped
    pd.testing.assert_frame_equal(got.loc[truth.index, truth.columns], truth, check_dtype=False)
    assert set(s.expression.obs_names) == set(pd.read_parquet(V1 / "cells.parquet")["cell_id"])
    assert s.organ == "unknown" and any("--organ" in w for w in s.warnings)
    assert read_cells(str(V1), organ="Lymph node").organ == "lymph_node"


def test_a_build_refuses_the_v1_folder_naming_what_is_missing():
    need(V1)
    assert list_samples(str(REAL)) == [str(V1)]  # found as a Xenium folder though it has no experiment.xenium
    with pytest.raises(SampleError, match=r"sample xenium_v1_crop: experiment\.xenium: file not found.*stx label"):
        read_sample(str(V1))


def test_without_a_matrix_expression_is_counted_from_the_transcripts(tmp_path):
    need(V1)
    folder = tmp_path / "v1_no_matrix"
    shutil.copytree(V1, folder, ignore=shutil.ignore_patterns("cell_feature_matrix.h5", "*.csv.gz"))
    s = read_cells(str(folder))
    cells = pd.read_parquet(V1 / "cells.parquet")["cell_id"]
    expected = _transcript_counts(V1, set(cells))
    got = _as_frame(s).stack()
    got = got[got > 0]
    assert s.n_cells == len(cells) and s.metadata["expression_from"] == "transcripts.parquet"
    assert got.sum() == expected.sum() > 0
    assert got.sort_index().to_dict() == expected.sort_index().to_dict()


@pytest.mark.parametrize("sample,organ", [("sample1", "ovary"), ("sample2", "prostate"), ("sample3", "unknown"),
                                          ("sample4", "ovary")])
def test_real_xenium_v3_runs_read_with_their_columns(sample, organ):
    folder = need(V3 / sample)
    s = read_cells(str(folder))
    cells = pd.read_parquet(folder / "cells.parquet")["cell_id"]
    assert s.n_cells == len(cells) == 10_000 and s.organ == organ
    assert s.metadata["analysis_sw_version"].startswith("xenium-3.")
    expected = _transcript_counts(folder, set(cells))
    assert int(s.expression.X.sum()) == int(expected.sum())
    if sample == "sample3":  # a mouse brain run: no organ, and the organism is named
        assert any("Mouse" in w for w in s.warnings)
    else:
        assert not s.warnings


def test_a_10x_matrix_file_and_an_h5ad_of_raw_counts(tmp_path):
    need(V1)
    s = read_cells(str(V1 / "cell_feature_matrix.h5"), organ="lymph_node")
    assert s.sample_id == "xenium_v1_crop" and s.n_cells == 526 and s.organ == "lymph_node"

    counts = _matrix_genes(V1 / "cell_feature_matrix.h5")
    norm = np.log1p(counts.to_numpy() / np.maximum(counts.sum(1).to_numpy()[:, None], 1) * 1e4)
    a = ad.AnnData(X=norm.astype(np.float32), obs=pd.DataFrame(index=counts.index),
                   var=pd.DataFrame(index=counts.columns))
    a.layers["counts"] = sp.csr_matrix(counts.to_numpy())
    a.obs["class"] = np.where(counts["CD3E"] > 0, "Inflammatory", "Unknown")
    a.uns["organ"] = "lymph node"
    a.write_h5ad(tmp_path / "crop.h5ad")
    h = read_cells(str(tmp_path / "crop.h5ad"))
    assert h.sample_id == "crop" and h.organ == "lymph_node" and not h.warnings
    pd.testing.assert_frame_equal(_as_frame(h).loc[counts.index, counts.columns], counts, check_dtype=False)
    assert h.ground_truth["class"].to_dict() == dict(zip(counts.index, a.obs["class"]))

    del a.layers["counts"]   # only normalised values: refused, saying what is needed
    a.write_h5ad(tmp_path / "norm.h5ad")
    with pytest.raises(SampleError, match=r"sample norm: norm\.h5ad: X: .*not integer counts.*layers\['counts'\]"):
        read_cells(str(tmp_path / "norm.h5ad"))
    with pytest.raises(SampleError, match="neither a Xenium output folder"):
        read_cells(str(tmp_path))


def test_stx_label_on_real_folders_of_both_versions(tmp_path, capsys):
    need(V1)
    need(V3)
    assert cell_refs(str(V3)) == [str(V3 / f"sample{i}") for i in range(1, 5)]
    assert main(["label", "--sample", str(V1), "--organ", "lymph_node", "--out", str(tmp_path / "v1")]) == 0
    [table] = (tmp_path / "v1").glob("*/xenium_v1_crop.parquet")
    cells, meta = read_label_table(str(table))
    assert len(cells) == 526 and cells["label"].isin(["Epithelial", "Neoplastic", "Inflammatory", "Connective",
                                                      "Unknown"]).all()
    assert main(["label", "--sample", str(V3 / "sample2"), "--out", str(tmp_path / "v3")]) == 0
    out = capsys.readouterr().out
    assert "10,000 cells" in out and "organ prostate" in out
    assert len(list((tmp_path / "v3").glob("*/sample2.parquet"))) == 1
