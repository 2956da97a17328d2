"""The dataset build: one slide (pure), then the Ray Data pipeline with resume, a failing slide,
a crash mid-shard, s3:// and `ray job submit`."""

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stx_platform import storage
from stx_platform.build import slide as B
from stx_platform.build.manifest import DONE, FAILED, read_records
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.markers import default_markers
from stx_platform.labels.table import read_label_table
from stx_platform.patches.config import PatchConfig
from stx_platform.patches.schema import PATCH_SCHEMA
from stx_platform.sources import list_samples



@pytest.fixture(scope="module")
def ref(hest_root):
    return list_samples(hest_root)[0]


def test_one_slide_gives_a_shard_a_label_table_and_a_record(ref, tmp_path):
    out = str(tmp_path)
    rec = B.build_slide(ref, out, PatchConfig(), LabelConfig(), default_markers())
    assert rec.status == DONE, rec.error
    t = pq.read_table(f"{out}/{rec.shard}")
    assert t.schema.remove_metadata() == PATCH_SCHEMA.remove_metadata() and t.num_rows == rec.patches > 0
    cells, meta = read_label_table(f"{out}/{rec.label_table}")
    ids = {c for lst in t.column("cell_ids").to_pylist() for c in lst}
    assert ids <= set(cells.index) and meta["label_set_id"] == rec.label_set_id
    assert read_records(out)[rec.sample_id].status == DONE


def test_review_files_open_in_qupaths_format_and_in_scanpy(ref, tmp_path, capsys):
    import anndata as ad
    import cv2
    import numpy as np

    from stx_platform.cli import main
    from stx_platform.sources import read_sample
    from stx_platform.taxonomy import CLASS_COLOURS

    out = str(tmp_path)
    rec = B.build_slide(ref, out, PatchConfig(), LabelConfig(), default_markers())
    cells, _ = read_label_table(f"{out}/{rec.label_table}")
    sample = read_sample(ref)
    folder = tmp_path / rec.review
    gj = json.loads((folder / "nuclei.geojson").read_text())
    feats = gj["features"]
    assert gj["type"] == "FeatureCollection" and len(feats) == rec.cells == sample.n_cells
    f = feats[0]
    assert f["properties"]["objectType"] == "detection" and f["geometry"]["type"] == "Polygon"
    ring = f["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) >= 4
    first = sample.cell_ids[0]
    assert f["properties"]["classification"]["name"] == cells.loc[first, "label"]
    m = f["properties"]["measurements"]
    assert m["cluster"] == cells.loc[first, "cluster"] and {"votes_epithelial", "fallback", "area_um2"} <= set(m)
    assert [g["properties"]["classification"]["name"] for g in feats] == list(cells["label"].reindex(sample.cell_ids))

    a = ad.read_h5ad(folder / "cells.h5ad")
    assert list(a.obs_names) == list(sample.cell_ids) and a.obsm["spatial"].shape == (sample.n_cells, 2)
    assert (a.obs["stx_label"].astype(str) == cells["label"].reindex(a.obs_names).astype(str)).all()
    assert (a.obs["stx_cluster"].astype(int) == cells["cluster"].reindex(a.obs_names)).all()
    assert np.array_equal(a.X.toarray(), sample.expression.X.toarray()) and a.uns["stx"]["mpp"] == sample.mpp
    img = cv2.cvtColor(cv2.imread(str(folder / "labels.png")), cv2.COLOR_BGR2RGB)
    present = set(cells["label"])
    for cls in present:   # every label on the slide is drawn in its colour
        assert (img == np.array(CLASS_COLOURS[cls], np.uint8)).all(-1).any(), cls

    assert main(["review", rec.sample_id, "--dataset", out]) == 0
    printed = capsys.readouterr().out
    assert str(folder / "nuclei.geojson") in printed and "QuPath" in printed and "(missing)" not in printed
    assert main(["review", "nope", "--dataset", out]) == 2
    assert f"no slide 'nope' in this build (slides: {rec.sample_id})" in capsys.readouterr().err


def test_a_label_change_never_recuts_patches(ref, tmp_path, monkeypatch):
    out = str(tmp_path)
    first = B.build_slide(ref, out, PatchConfig(), LabelConfig(), default_markers())
    mtime = os.path.getmtime(f"{out}/{first.shard}")
    calls = []
    monkeypatch.setattr(B, "write_shard", lambda *a, **k: calls.append(1) or (0, 0))
    second = B.build_slide(ref, out, PatchConfig(), LabelConfig(tau_cancer=0.4), default_markers(), previous=first)
    assert second.status == DONE and not calls and second.patches == first.patches
    assert second.label_set_id != first.label_set_id
    assert os.path.getmtime(f"{out}/{first.shard}") == mtime
    assert storage.exists(f"{out}/{first.label_table}") and storage.exists(f"{out}/{second.label_table}")
    B.build_slide(ref, out, PatchConfig(stride=200), LabelConfig(), default_markers(), previous=second)
    assert calls  # a patch-config change does re-cut


def test_a_crash_mid_shard_leaves_no_shard_and_no_done_record(ref, tmp_path, monkeypatch):
    out = str(tmp_path)
    real = B.patches_for_sample

    def crashing(*a, **k):
        it = real(*a, **k)
        yield next(it)
        raise MemoryError("worker killed")
    monkeypatch.setattr(B, "patches_for_sample", crashing)
    rec = B.build_slide(ref, out, PatchConfig(), LabelConfig(), default_markers())
    assert rec.status == FAILED and "MemoryError" in rec.error
    assert not (tmp_path / "patches").exists() or not any((tmp_path / "patches").iterdir())


def _broken_copy(hest_root, dst):
    """A copy of the HEST root with a fourth sample whose WSI is corrupt."""
    shutil.copytree(hest_root, dst)
    sid = list_samples(hest_root)[0].rsplit("#", 1)[1]
    meta = json.loads((Path(dst) / "metadata" / f"{sid}.json").read_text())
    meta["id"] = "BAD0001"
    (Path(dst) / "metadata" / "BAD0001.json").write_text(json.dumps(meta))
    for sub, suffix in (("st", ".h5ad"), ("transcripts", "_transcripts.parquet"),
                        ("xenium_seg", "_xenium_nucleus_seg.parquet"), ("xenium_seg", "_xenium_cell_seg.parquet")):
        src = Path(dst) / sub / f"{sid}{suffix}"
        if src.exists():
            shutil.copy(src, Path(dst) / sub / f"BAD0001{suffix}")
    (Path(dst) / "wsis" / "BAD0001.tif").write_bytes(b"II*\x00 this is not a tiff")
    return dst


def test_a_finished_slide_is_judged_again_by_a_later_builds_gates():
    from stx_platform.build.manifest import SlideRecord
    from stx_platform.build.quality import QualityConfig, recheck

    rec = SlideRecord("S1", "root#S1", DONE, patches=40, median_nucleus_area_um2=31.0, empty_share=0.02)
    assert recheck(rec, QualityConfig()) is rec
    failed = recheck(rec, QualityConfig(max_empty_share=0.01))
    assert (failed.status, failed.gate) == (FAILED, "max_empty_share") and "2%" in failed.error
    assert recheck(rec, QualityConfig(min_patches=41)).gate == "min_patches"
    old = SlideRecord("S2", "root#S2", DONE, patches=40)          # a record from before the measurements
    assert recheck(old, QualityConfig(max_empty_share=0.0)) is old


@pytest.mark.slow
def test_a_slide_whose_worker_keeps_dying_is_failed_not_retried_forever(ref, tmp_path):
    """Ray Data gives a slide whose task's worker died to a new task, forever; the attempts
    counted before each start stop that after MAX_ATTEMPTS."""
    from stx_platform.build.run import MAX_ATTEMPTS, SlideBuilder, attempts_url

    out = str(tmp_path / "ds")
    builder = SlideBuilder(out, PatchConfig().model_dump(), LabelConfig().model_dump(), {})
    row = {"ref": ref, "sample_id": ref.rsplit("#", 1)[1]}
    marker = attempts_url(out, row["sample_id"])
    storage.write_bytes(marker, str(MAX_ATTEMPTS).encode())          # as two dead workers left it
    rec = builder(row)["record"]
    assert rec["status"] == FAILED and rec["error"].startswith("WorkerDied") and f"died {MAX_ATTEMPTS} time" in rec["error"]
    assert read_records(out)[row["sample_id"]].status == FAILED and not storage.exists(marker)
    storage.write_bytes(marker, b"1")                                # one death: it gets its second try
    assert builder(row)["record"]["status"] == DONE and not storage.exists(marker)


def test_ray_build_records_a_failing_slide_and_resumes(hest_root, tmp_path, local_ray, capsys):
    from stx_platform.build.run import run_build

    src = _broken_copy(hest_root, str(tmp_path / "src"))
    out = str(tmp_path / "ds")
    said = logging.Handler()          # what Ray Data logs: nothing of a deprecated API
    said.emit = lambda r: warned.append(r.getMessage()) if "deprecated" in r.getMessage() else None
    warned: list[str] = []
    logging.getLogger("ray.data").addHandler(said)
    try:
        doc = run_build(src, out, PatchConfig(), LabelConfig())
    finally:
        logging.getLogger("ray.data").removeHandler(said)
    assert not warned, warned
    status = {r["sample_id"]: r for r in doc["slides"]}
    assert len(status) == 4 and doc["done"] == 3 and doc["failed"] == 1
    assert "BAD0001" in status and "wsis/BAD0001.tif" in status["BAD0001"]["error"]
    again = run_build(src, out, PatchConfig(), LabelConfig())
    text = capsys.readouterr().out
    assert "3 already done, 1 to do" in text and again["done"] == 3
    relabel = run_build(src, out, PatchConfig(), LabelConfig(top_n=8))
    assert relabel["done"] == 3 and len(list((tmp_path / "ds" / "labels").iterdir())) == 2
    # stricter gates judge the finished slides again from their records, without re-reading them
    from stx_platform.build.quality import QualityConfig

    capsys.readouterr()
    # (the source without BAD0001: only finished slides, so no slide task runs)
    strict = run_build(hest_root, out, PatchConfig(), LabelConfig(top_n=8),
                       quality=QualityConfig(max_nucleus_area_um2=1.0))
    regated = [r for r in strict["slides"] if r["gate"] == "max_nucleus_area_um2"]
    assert strict["done"] == 0 and len(regated) == 3 and all("judged again" in r["error"] for r in regated)
    assert "3 built earlier failing this build's quality gates" in capsys.readouterr().out
    assert read_records(out)[regated[0]["sample_id"]].status == FAILED


@pytest.mark.slow
def test_ray_build_from_and_to_s3(s3_server, hest_root, local_ray):
    from stx_platform.build.run import run_build
    from stx_platform.synth.generate import generate_set, plan

    src = f"{s3_server}/build-src"
    generate_set(src, plan(slides=1, seed=4, organs=("colon",), cells=500), layout="hest", workers=1)
    doc = run_build(src, f"{s3_server}/build-out", PatchConfig(), LabelConfig())
    assert doc["done"] == 1, doc["slides"]
    rec = doc["slides"][0]
    with storage.open_file(f"{s3_server}/build-out/{rec['shard']}") as f:
        assert pq.read_table(f).num_rows == rec["patches"] > 0



def test_summary_tables_picture_and_mlflow_run(ref, tmp_path):
    import mlflow

    from stx_platform.build.manifest import write_manifest
    from stx_platform.build.summary import log_to_mlflow, summarise

    out = str(tmp_path / "ds")
    rec = B.build_slide(ref, out, PatchConfig(), LabelConfig(), default_markers())
    doc = write_manifest(out, [rec], {"source": "test", "label_set_id": rec.label_set_id,
                                      "patch_config_hash": rec.patch_config, "markers_hash": "m"})
    s = summarise(out, doc)
    by_organ = s["by_organ"]
    assert by_organ[["Neoplastic", "Epithelial", "Inflammatory", "Connective", "Unknown"]].to_numpy().sum() == rec.nuclei
    assert (tmp_path / "ds" / "summary" / "patches_by_label.png").stat().st_size > 50_000
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = log_to_mlflow(out, doc, s, uri)
    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(run_id)
    assert run.data.metrics["patches"] == rec.patches and run.data.params["label_set_id"] == rec.label_set_id
    arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id)}
    assert {"summary.md", "manifest.json"} <= arts and any(a.endswith(".png") or "image" in a for a in arts)
