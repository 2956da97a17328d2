"""HEST-1k layout: what the generator writes and what the reader builds from it."""

import json
import re
import shutil

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stx_platform.sources import list_samples, read_sample
from stx_platform.sources.hest import list_hest_samples, read_hest_sample
from stx_platform.synth.panel import gene_panel
from stx_platform.synth.write_hest import HEST_METADATA_KEYS
from stx_platform.taxonomy import LABEL_CLASSES


def test_layout_files_and_names(hest_root):
    ids = list_hest_samples(hest_root)
    assert len(ids) == 3
    sid = ids[0]
    for rel in (f"wsis/{sid}.tif", f"st/{sid}.h5ad", f"metadata/{sid}.json", f"transcripts/{sid}_transcripts.parquet",
                f"xenium_seg/{sid}_xenium_nucleus_seg.parquet", f"xenium_seg/{sid}_xenium_cell_seg.parquet",
                f"tissue_seg/{sid}_contours.geojson", f"thumbnails/{sid}_downscaled_fullres.jpeg",
                f"thumbnails/{sid}_truth.png", f"annotations/{sid}_annotation.csv"):
        assert (pd.io.common.file_exists(f"{hest_root}/{rel}")), rel
    meta = json.load(open(f"{hest_root}/metadata/{sid}.json"))
    assert set(HEST_METADATA_KEYS) <= set(meta) and meta["st_technology"] == "Xenium"
    assert meta["pixel_size_um_estimated"] in (0.2125, 0.2737)


def test_st_h5ad_is_hest_pseudo_visium_not_per_cell(hest_root):
    sid = list_hest_samples(hest_root)[0]
    a = ad.read_h5ad(f"{hest_root}/st/{sid}.h5ad")
    assert all(re.fullmatch(r"\d{3,}x\d{3,}", i) for i in a.obs_names)
    assert {"in_tissue", "pxl_col_in_fullres", "pxl_row_in_fullres", "array_col", "array_row"} <= set(a.obs)
    assert a.obsm["spatial"].shape == (a.n_obs, 2)
    st = a.uns["spatial"]["ST"]
    assert st["images"]["downscaled_fullres"].ndim == 3
    assert set(st["scalefactors"]) == {"tissue_downscaled_fullres_scalef", "spot_diameter_fullres"}
    assert any(v.startswith("NegControl") for v in a.var_names)  # HEST keeps controls
    meta = json.load(open(f"{hest_root}/metadata/{sid}.json"))
    spacing = np.diff(np.unique(a.obs["pxl_col_in_fullres"]))
    assert np.allclose(spacing * meta["pixel_size_um_estimated"], 100, atol=1e-6)  # 100 um bins
    assert a.n_obs < 0.2 * len(gpd.read_parquet(f"{hest_root}/xenium_seg/{sid}_xenium_nucleus_seg.parquet"))


def _naive_counts(root, sid, cell_ids):
    """Independent reference: pandas over the transcripts table."""
    t = pq.read_table(f"{root}/transcripts/{sid}_transcripts.parquet").to_pandas()
    for c in ("cell_id", "feature_name"):
        t[c] = [v.decode() if isinstance(v, bytes) else str(v) for v in t[c]]
    t = t[(t.qv >= 20) & t.feature_name.isin(gene_panel()) & t.cell_id.isin(cell_ids)]
    return pd.crosstab(t.cell_id, t.feature_name)


@pytest.mark.parametrize("i", [0, 1, 2])
def test_reader_builds_per_cell_expression_for_every_format_generation(hest_root, i):
    sid = list_hest_samples(hest_root)[i]
    s = read_hest_sample(hest_root, sid)
    seg = gpd.read_parquet(f"{hest_root}/xenium_seg/{sid}_xenium_nucleus_seg.parquet")
    assert s.n_cells == len(seg) == len(s.nuclei)
    assert list(s.expression.var_names) == sorted(gene_panel())  # controls dropped, canonical gene order
    ref = _naive_counts(hest_root, sid, set(s.cell_ids))
    got = s.expression.to_df().loc[ref.index, ref.columns]
    assert np.array_equal(got.to_numpy(), ref.to_numpy())
    assert s.provenance["transcripts_low_qv"] > 0 and s.provenance["transcripts_controls"] > 0
    # ground truth aligned with the cells, in the label classes
    assert s.ground_truth is not None and set(s.ground_truth.index) == set(s.cell_ids)
    assert set(s.ground_truth["class"]) <= set(LABEL_CLASSES)
    # nuclei are in H&E pixels on this image, the image is read lazily by region
    b = np.array([p.bounds for p in s.nuclei])
    assert b[:, 0].min() >= -2 and b[:, 2].max() <= s.wsi.width + 2
    assert s.wsi.read_region(0, 0, 32, 32).shape == (32, 32, 3)


def test_assignment_modes_are_consistent(hest_root):
    sid = list_hest_samples(hest_root)[0]
    by_id = read_hest_sample(hest_root, sid, assignment="cell_id").expression.X.sum()
    nuc = read_hest_sample(hest_root, sid, assignment="nucleus").expression.X.sum()
    poly = read_hest_sample(hest_root, sid, assignment="polygon").expression.X.sum()
    # DAPI outlines are a little larger than the H&E nuclei and offset by registration, so
    # point-in-polygon catches some perinuclear transcripts that overlaps_nucleus does not
    assert nuc < by_id and 0.8 * nuc < poly < 1.6 * nuc


def test_pixel_size_comes_from_metadata_not_the_tiff_tag(hest_root):
    import tifffile

    sid = next(i for i in list_hest_samples(hest_root)
               if json.load(open(f"{hest_root}/metadata/{i}.json"))["stx_format_style"] == "modern")
    s = read_hest_sample(hest_root, sid)
    with tifffile.TiffFile(f"{hest_root}/wsis/{sid}.tif") as t:
        x = t.pages[0].tags["XResolution"].value
    assert abs(1e4 / (x[0] / x[1]) * 10 - s.mpp) < 1e-6  # tag 10x off, as HEST issue #106


def test_per_cell_h5ad_is_used_when_present(hest_root, tmp_path):
    sid = list_hest_samples(hest_root)[0]
    root = tmp_path / "h"
    shutil.copytree(hest_root, root)
    s = read_hest_sample(str(root), sid)
    X = s.expression.X.toarray()
    ctrl = np.ones((s.n_cells, 1), np.int32)
    per_cell = ad.AnnData(X=np.hstack([X, ctrl]).astype(np.float32),
                          obs=pd.DataFrame(index=s.cell_ids),
                          var=pd.DataFrame(index=list(s.expression.var_names) + ["NegControlProbe_00004"]))
    per_cell.write_h5ad(root / "st" / f"{sid}.h5ad")
    (root / "transcripts" / f"{sid}_transcripts.parquet").unlink()
    s2 = read_hest_sample(str(root), sid)
    assert s2.provenance["expression_from"] == f"st/{sid}.h5ad"
    assert np.array_equal(s2.expression.X.toarray(), X)


def test_listing_and_references(hest_root):
    refs = list_samples(hest_root)
    assert refs == [f"{hest_root}#{i}" for i in list_hest_samples(hest_root)]
    assert read_sample(refs[1]).sample_id == list_hest_samples(hest_root)[1]


def test_visium_and_st_samples_in_a_hest_root_are_not_listed(hest_root, tmp_path):
    from stx_platform.sources import sample_refs
    from stx_platform.sources.hest import hest_technologies

    root = tmp_path / "hest"
    shutil.copytree(hest_root, root)
    xenium = list_hest_samples(str(root))
    for sid, tech in (("TENX95", "Visium"), ("NCBI1", "Spatial Transcriptomics")):  # no files but the metadata
        (root / "metadata" / f"{sid}.json").write_text(json.dumps({"id": sid, "st_technology": tech}))
    assert hest_technologies(str(root))["TENX95"] == "Visium"
    assert list_hest_samples(str(root)) == xenium and len(list_samples(str(root))) == len(xenium)
    for sid in xenium:
        (root / "metadata" / f"{sid}.json").unlink()
    with pytest.raises(ValueError, match="only Spatial Transcriptomics, Visium samples"):
        sample_refs(str(root))
