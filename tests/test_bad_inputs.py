"""Every kind of bad input is one SampleError naming the sample, the file and the problem."""

import io
import json
import shutil
from pathlib import Path

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely

from stx_platform.errors import SampleError
from stx_platform.sources.hest import list_hest_samples, read_hest_sample
from stx_platform.sources.pannuke import PanNukeFold
from stx_platform.sources.xenium import read_xenium_bundle


@pytest.fixture
def sample(hest_root, tmp_path):
    """A private copy of one HEST sample to break."""
    sid = list_hest_samples(hest_root)[0]
    root = tmp_path / "hest"
    shutil.copytree(hest_root, root)
    return root, sid


def _fails(root, sid, file_part, problem, **kw):
    with pytest.raises(SampleError) as e:
        read_hest_sample(str(root), sid, **kw)
    msg = str(e.value)
    assert msg.startswith(f"sample {sid}: ") and file_part in msg and problem in msg, msg
    return msg


@pytest.mark.parametrize("rel,problem", [
    ("metadata/{sid}.json", "file not found"),
    ("wsis/{sid}.tif", "file not found"),
    ("xenium_seg/{sid}_xenium_nucleus_seg.parquet", "file not found"),
    ("transcripts/{sid}_transcripts.parquet", "not per cell"),
])
def test_missing_files(sample, rel, problem):
    root, sid = sample
    (root / rel.format(sid=sid)).unlink()
    _fails(root, sid, rel.format(sid=sid), problem)


@pytest.mark.parametrize("value", [None, 0, -0.25, "abc", float("nan")])
def test_unknown_pixel_size(sample, value):
    root, sid = sample
    p = root / "metadata" / f"{sid}.json"
    meta = json.loads(p.read_text())
    if value is None:
        del meta["pixel_size_um_estimated"]
    else:
        meta["pixel_size_um_estimated"] = value
    p.write_text(json.dumps(meta))
    _fails(root, sid, f"metadata/{sid}.json", "unknown pixel size")


def test_invalid_metadata_json(sample):
    root, sid = sample
    (root / "metadata" / f"{sid}.json").write_text("{not json")
    _fails(root, sid, f"metadata/{sid}.json", "not valid JSON")


def test_corrupt_tiff(sample):
    root, sid = sample
    (root / "wsis" / f"{sid}.tif").write_bytes(b"II*\x00garbage" * 100)
    _fails(root, sid, f"wsis/{sid}.tif", "not a readable TIFF")


def _rewrite_seg(root, sid, fn):
    p = root / "xenium_seg" / f"{sid}_xenium_nucleus_seg.parquet"
    gdf = gpd.read_parquet(p)
    fn(gdf).to_parquet(p)


def test_cell_ids_differ_between_expression_and_polygons(sample):
    root, sid = sample
    _rewrite_seg(root, sid, lambda g: g.set_index(pd.Index([f"cell{i}" for i in range(len(g))])))
    _fails(root, sid, "transcripts", "cell ids differ")


def test_duplicate_cell_ids(sample):
    root, sid = sample
    _rewrite_seg(root, sid, lambda g: g.set_index(pd.Index(["same"] * len(g))))
    _fails(root, sid, "xenium_seg", "duplicate cell ids")


def test_polygons_outside_the_image(sample):
    root, sid = sample
    _rewrite_seg(root, sid, lambda g: g.set_geometry(g.geometry.translate(xoff=1e5)))
    _fails(root, sid, "xenium_seg", "outside the")


def test_a_few_nuclei_off_the_image_are_dropped_and_counted(sample):
    root, sid = sample
    n = read_hest_sample(str(root), sid).n_cells

    def shift_three(g):
        geoms = g.geometry.copy()
        geoms.iloc[:3] = geoms.iloc[:3].translate(xoff=1e5)
        return g.set_geometry(geoms)
    _rewrite_seg(root, sid, shift_three)
    s = read_hest_sample(str(root), sid)
    assert s.n_cells == n - 3 and s.provenance["nuclei_off_image"] == 3


def test_self_intersecting_nuclei_are_repaired_and_flat_ones_dropped(sample):
    """Two nuclei of one cell traced as one ring cross themselves (invalid); the larger lobe is
    kept. A ring with no area left is not a nucleus."""
    root, sid = sample
    n = read_hest_sample(str(root), sid).n_cells

    def corrupt(g):
        geoms = g.geometry.copy()
        x, y = shapely.get_coordinates(geoms.iloc[0].centroid)[0]
        geoms.iloc[0] = shapely.Polygon([(x, y), (x + 8, y + 8), (x + 8, y), (x, y + 8)])    # bow tie
        geoms.iloc[1] = shapely.Polygon([(x, y), (x + 4, y), (x + 8, y), (x + 4, y)])        # no area
        return g.set_geometry(geoms)
    _rewrite_seg(root, sid, corrupt)
    s = read_hest_sample(str(root), sid)
    assert (s.provenance["nuclei_repaired"], s.provenance["nuclei_unusable"]) == (2, 1)
    assert s.n_cells == n - 1 and shapely.is_valid(s.nuclei).all()
    assert shapely.area(s.nuclei[0]) == pytest.approx(16.0)   # one triangle of the bow tie


def test_geometries_that_are_not_polygons(sample):
    root, sid = sample

    def bad(g):
        geoms = g.geometry.to_numpy().copy()
        geoms[3] = shapely.Point(1, 1)
        return g.set_geometry(gpd.GeoSeries(geoms, index=g.index))
    _rewrite_seg(root, sid, bad)
    _fails(root, sid, "xenium_seg", "not polygons")


def test_transcripts_missing_a_column(sample):
    root, sid = sample
    p = root / "transcripts" / f"{sid}_transcripts.parquet"
    pq.write_table(pq.read_table(p).drop(["cell_id"]), p)
    _fails(root, sid, "transcripts", "missing column(s) ['cell_id']")


def test_corrupt_parquet(sample):
    root, sid = sample
    (root / "transcripts" / f"{sid}_transcripts.parquet").write_bytes(b"PAR1" + b"\x00" * 64)
    _fails(root, sid, "transcripts", "not a readable Parquet file")


def _per_cell(root, sid, X):
    ids = gpd.read_parquet(root / "xenium_seg" / f"{sid}_xenium_nucleus_seg.parquet").index.astype(str)
    a = ad.AnnData(X=X(len(ids)), obs=pd.DataFrame(index=ids),
                   var=pd.DataFrame(index=[f"G{i}" for i in range(X(len(ids)).shape[1])]))
    a.write_h5ad(root / "st" / f"{sid}.h5ad")


@pytest.mark.parametrize("make,problem", [
    (lambda n: np.full((n, 3), np.nan, np.float32), "NaN"),
    (lambda n: -np.ones((n, 3), np.float32), "negative"),
    (lambda n: np.zeros((n, 3), np.float32), "all expression values are zero"),
    (lambda n: np.zeros((n, 0), np.float32), "empty expression matrix"),
    (lambda n: np.full((n, 3), 0.37, np.float32), "not integer counts"),
    (lambda n: np.full((n, 3), "7", dtype=object), "not numeric counts"),
])
def test_bad_counts_in_a_per_cell_matrix(sample, make, problem):
    root, sid = sample
    _per_cell(root, sid, make)
    _fails(root, sid, f"st/{sid}.h5ad", problem)


@pytest.mark.parametrize("bad_id", ["../etc", "a/b", "..", "", "x" * 200, "ok\nno"])
def test_unsafe_sample_ids(hest_root, bad_id):
    with pytest.raises(SampleError, match="unsafe sample id"):
        read_hest_sample(hest_root, bad_id)


# raw Xenium bundles ----------------------------------------------------------------------

@pytest.fixture
def bundle(xenium_root, tmp_path):
    src = sorted(Path(xenium_root).iterdir())[0]
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def _bundle_fails(path, file_part, problem):
    with pytest.raises(SampleError) as e:
        read_xenium_bundle(str(path))
    msg = str(e.value)
    assert msg.startswith(f"sample {path.name}: ") and file_part in msg and problem in msg, msg


def test_bundle_missing_alignment(bundle):
    next(bundle.glob("*he_imagealignment.csv")).unlink()
    _bundle_fails(bundle, "_imagealignment.csv", "no H&E alignment")


def test_bundle_alignment_named_after_its_image_and_keypoints_refused(bundle):
    from stx_platform.sources.xenium import read_xenium_bundle as read

    [al] = bundle.glob("*he_imagealignment.csv")
    n = read(str(bundle)).n_cells
    al.rename(bundle / "tissue_scan_imagealignment.csv")          # Xenium Explorer names it after the image
    assert read(str(bundle)).n_cells == n
    (bundle / "tissue_scan_imagealignment.csv").write_text("fixedX,fixedY,alignmentX,alignmentY\n1,2,3,4\n")
    _bundle_fails(bundle, "tissue_scan_imagealignment.csv", "keypoints file")


def test_bundle_singular_alignment(bundle):
    next(bundle.glob("*he_imagealignment.csv")).write_text("0,0,0\n0,0,0\n0,0,1\n")
    _bundle_fails(bundle, "he_imagealignment.csv", "invertible")


def test_bundle_cells_disagree_with_matrix(bundle):
    t = pq.read_table(bundle / "cells.parquet")
    pq.write_table(t.slice(0, t.num_rows - 5), bundle / "cells.parquet")
    _bundle_fails(bundle, "cells.parquet", "disagree")


def test_bundle_corrupt_cells_table(bundle):
    (bundle / "cells.parquet").write_bytes(b"PAR1" + b"\x00" * 64)
    _bundle_fails(bundle, "cells.parquet", "not a readable Parquet file")


def test_bundle_corrupt_matrix(bundle):
    (bundle / "cell_feature_matrix.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    _bundle_fails(bundle, "cell_feature_matrix.h5", "not a 10x feature-barcode matrix")


def test_bundle_not_a_bundle(tmp_path):
    (tmp_path / "empty").mkdir()
    _bundle_fails(tmp_path / "empty", "experiment.xenium", "file not found")


# PanNuke ---------------------------------------------------------------------------------

@pytest.fixture
def fold(pannuke_dir, tmp_path):
    dst = tmp_path / "fold"
    shutil.copytree(pannuke_dir, dst)
    return dst


def test_pannuke_refuses_pickled_arrays(fold):
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}] * 14, dtype=object), allow_pickle=True)
    (fold / "types.npy").write_bytes(buf.getvalue())
    with pytest.raises(SampleError, match="types.npy.*refusing to unpickle"):
        PanNukeFold(str(fold))


def test_pannuke_shape_mismatch(fold):
    np.save(fold / "masks.npy", np.zeros((3, 256, 256, 6), np.int32))
    with pytest.raises(SampleError, match=r"masks.npy: expected \(14, 256, 256, 6\)"):
        PanNukeFold(str(fold))


def test_pannuke_truncated(fold):
    raw = (fold / "images.npy").read_bytes()
    (fold / "images.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SampleError, match="images.npy: truncated"):
        PanNukeFold(str(fold))


def test_pannuke_not_a_fold(tmp_path):
    with pytest.raises(SampleError, match="not a PanNuke fold"):
        PanNukeFold(str(tmp_path))


# quality gates of a build -----------------------------------------------------------------

def _build(root, sid, tmp_path, **quality):
    from stx_platform.build.quality import QualityConfig
    from stx_platform.build.slide import build_slide
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.markers import default_markers
    from stx_platform.patches.config import PatchConfig

    return build_slide(f"{root}#{sid}", str(tmp_path / "ds"), PatchConfig(), LabelConfig(), default_markers(),
                       quality=QualityConfig(**quality))


def _set_meta(root, sid, **kw):
    p = root / "metadata" / f"{sid}.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **kw}))


@pytest.mark.parametrize("mpp,gate", [(2.125, "max_nucleus_area_um2"), (0.01, "min_nucleus_area_um2")])
def test_a_pixel_size_that_disagrees_with_nucleus_sizes_fails_its_gate(sample, tmp_path, mpp, gate):
    """HEST #106: TIFF tags 10x off. In pixels the polygons look fine; in um^2 nuclei are 100x too
    large (or 450x too small), so the slide fails instead of giving 14x (or no) patches."""
    root, sid = sample
    _set_meta(root, sid, pixel_size_um_estimated=mpp)
    rec = _build(root, sid, tmp_path)
    assert rec.status == "failed" and rec.gate == gate and "pixel size is likely wrong" in rec.error
    assert f"--set quality.{gate}=" in rec.error and rec.patches == 0


def test_nuclei_without_transcripts_and_too_few_patches_fail_their_gates(sample, tmp_path):
    root, sid = sample
    p = root / "transcripts" / f"{sid}_transcripts.parquet"
    t = pq.read_table(p)
    cells = pd.Series(t.column("cell_id").to_pylist())
    keep = ~cells.isin(set(cells.drop_duplicates().iloc[: cells.nunique() // 2]))
    pq.write_table(t.filter(keep.to_numpy()), p)
    rec = _build(root, sid, tmp_path)
    assert rec.status == "failed" and rec.gate == "max_empty_share" and "have no transcript" in rec.error
    rec = _build(root, sid, tmp_path, max_empty_share=0.9, min_patches=10**6)   # overridden; next gate
    assert rec.status == "failed" and rec.gate == "min_patches" and rec.patches > 0


def test_an_unknown_organ_is_a_warning_and_the_slide_is_built(sample, tmp_path):
    root, sid = sample
    _set_meta(root, sid, organ="Brain")
    rec = _build(root, sid, tmp_path)
    assert rec.status == "done" and rec.patches > 0
    assert any("'Brain' is not one of" in w for w in rec.warnings)
