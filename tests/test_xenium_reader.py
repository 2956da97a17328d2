"""Raw Xenium bundles: files as 10x writes them, and the reader."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scanpy as sc
import shapely

from stx_platform.sources import list_samples
from stx_platform.sources.hest import read_hest_sample
from stx_platform.sources.xenium import list_xenium_bundles, read_xenium_bundle
from stx_platform.synth.panel import gene_panel


@pytest.mark.parametrize("i", [0, 1, 2])
def test_bundle_reads_and_matches_the_hest_copy(xenium_root, hest_root, i):
    name = sorted(list_xenium_bundles(xenium_root))[i]
    b = read_xenium_bundle(f"{xenium_root}/{name}")
    h = read_hest_sample(hest_root, name)  # same slide, written in the HEST layout
    assert list(b.cell_ids) == list(h.cell_ids)
    assert b.mpp == pytest.approx(h.mpp, rel=1e-9)  # from the alignment matrix
    # nuclei placed on the H&E through inv(alignment): same pixels as HEST's he_x/he_y frame
    cb = shapely.get_coordinates(shapely.centroid(b.nuclei))
    ch = shapely.get_coordinates(shapely.centroid(h.nuclei))
    assert np.abs(cb - ch).max() < 0.05
    # the 10x matrix counts qv >= 20 transcripts per cell, as rebuilt from HEST's transcripts
    assert np.array_equal(b.expression.X.toarray(), h.expression.X.toarray())
    assert b.organ in ("breast", "colon", "lung") and b.ground_truth is not None


def test_h5_is_readable_by_scanpy_as_10x(xenium_root):
    name = list_xenium_bundles(xenium_root)[0]
    a = sc.read_10x_h5(f"{xenium_root}/{name}/cell_feature_matrix.h5", gex_only=True)
    b = read_xenium_bundle(f"{xenium_root}/{name}")
    assert list(a.var_names) == list(gene_panel())
    assert np.array_equal(a[:, b.expression.var_names].X.toarray().astype(int), b.expression.X.toarray())


def test_bundle_file_conventions(xenium_root):
    names = sorted(list_xenium_bundles(xenium_root))
    versions = {json.load(open(f"{xenium_root}/{n}/experiment.xenium"))["analysis_sw_version"] for n in names}
    assert versions == {"xenium-1.0.2", "xenium-1.3.0.5", "xenium-2.0.0.10"}
    for n in names:
        nb = pq.read_table(f"{xenium_root}/{n}/nucleus_boundaries.parquet").to_pandas()
        first = nb.groupby("cell_id", sort=False).head(1).index
        last = nb.groupby("cell_id", sort=False).tail(1).index
        assert np.allclose(nb.loc[first, ["vertex_x", "vertex_y"]].to_numpy(),
                           nb.loc[last, ["vertex_x", "vertex_y"]].to_numpy())  # closed rings
        al = pd.read_csv(f"{xenium_root}/{n}/{n}_he_imagealignment.csv", header=None).to_numpy()
        assert al.shape == (3, 3) and np.allclose(al[2], [0, 0, 1])
        tx = pq.read_schema(f"{xenium_root}/{n}/transcripts.parquet")
        assert {"transcript_id", "cell_id", "overlaps_nucleus", "feature_name", "x_location", "y_location",
                "z_location", "qv"} <= set(tx.names)


def test_listing_finds_bundles(xenium_root):
    refs = list_samples(xenium_root)
    assert len(refs) == 3 and all(r.startswith(xenium_root) for r in refs)
    assert list_samples(refs[0]) == [refs[0]]


def test_nucleus_only_counts_are_the_transcripts_over_each_nucleus(xenium_root):
    name = sorted(list_xenium_bundles(xenium_root))[2]
    whole = read_xenium_bundle(f"{xenium_root}/{name}")
    nuc = read_xenium_bundle(f"{xenium_root}/{name}", assignment="nucleus")
    t = pq.read_table(f"{xenium_root}/{name}/transcripts.parquet").to_pandas()
    for c in ("cell_id", "feature_name"):   # this generation writes them as bytes
        t[c] = t[c].map(lambda v: v.decode() if isinstance(v, bytes) else str(v))
    t = t[(t["overlaps_nucleus"] == 1) & (t["qv"] >= 20) & t["cell_id"].isin(set(nuc.cell_ids))
          & t["feature_name"].isin(set(nuc.expression.var_names))]
    expected = t.groupby("cell_id").size().reindex(nuc.cell_ids, fill_value=0).to_numpy()
    assert np.array_equal(np.asarray(nuc.expression.X.sum(1)).ravel(), expected)
    assert nuc.provenance["assignment"] == "nucleus" and list(nuc.cell_ids) == list(whole.cell_ids)
    assert 0 < nuc.expression.X.sum() < whole.expression.X.sum()


def test_xenium_ranger_outs_folders_are_named_by_their_run(xenium_root, tmp_path):
    import shutil

    from stx_platform.sources import sample_id_of

    src = sorted(list_xenium_bundles(xenium_root))[0]
    for run in ("runA", "runB"):
        shutil.copytree(f"{xenium_root}/{src}", tmp_path / run / "outs")
    refs = list_samples(str(tmp_path))
    assert refs == [str(tmp_path / "runA" / "outs"), str(tmp_path / "runB" / "outs")]
    assert [sample_id_of(r) for r in refs] == ["runA", "runB"]
    assert read_xenium_bundle(refs[1]).sample_id == "runB"


def test_he_image_and_alignment_given_on_the_command_line(xenium_root, tmp_path, capsys):
    import shutil

    from stx_platform.cli import main

    src = sorted(list_xenium_bundles(xenium_root))[0]
    bundle = tmp_path / src
    shutil.copytree(f"{xenium_root}/{src}", bundle)
    elsewhere = tmp_path / "scans"
    elsewhere.mkdir()
    [he] = bundle.glob("*he_image.ome.tif")
    [al] = bundle.glob("*he_imagealignment.csv")
    shutil.move(he, elsewhere / "scan.ome.tif")
    shutil.move(al, elsewhere / "scan_alignment.csv")
    assert main(["inspect", str(bundle)]) == 2
    assert "no H&E image" in capsys.readouterr().err
    assert main(["inspect", str(bundle), "--he-image", str(elsewhere / "scan.ome.tif"),
                 "--alignment", str(elsewhere / "scan_alignment.csv"), "--assignment", "nucleus"]) == 0
    out = capsys.readouterr().out
    assert "assignment: nucleus" in out and "transcripts.parquet" in out
    assert main(["build", "--source", str(tmp_path), "--he-image", "x.ome.tif", "--out", str(tmp_path / "ds")]) == 2
    assert "not one Xenium bundle folder" in capsys.readouterr().err
