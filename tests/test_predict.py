"""stx predict: tiling and slide windows report each nucleus once at the right place, QuPath
GeoJSON, the command line and its errors.

Most tests replace the model's maps by maps read off the image itself (``colour_maps``): nuclei are
discs of pure class colours on white, so each tile's maps are what a perfect model would output
for exactly the pixels that tile sees, nuclei cut by the tile edge included.
"""

from __future__ import annotations

import argparse
import json
import re
import uuid

import numpy as np
import pytest
import shapely
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from stx_platform import inference, storage
from stx_platform.predict import (Slide, add_predict_parser, cmd_predict, open_slide, predict_image,
                                  predict_image_at, predict_slide, tile_origins, to_geojson, write_geojson)
from stx_platform.sources import list_samples
from stx_platform.sources.wsi import WSI, write_pyramid_tiff
from stx_platform.targets import hv_map
from stx_platform.taxonomy import CLASS_COLOURS, PANNUKE_TYPE_ORDER

CLASSES = ("Neoplastic", "Inflammatory", "Connective", "Epithelial")
DEFICIT = {c: 255.0 - np.array(CLASS_COLOURS[c], np.float64) for c in CLASSES}


def colour_maps(model, images, batch_size=8, amp=True):
    """Maps of a perfect model for images of class-coloured discs on white: a nucleus is a
    connected non-white blob, its class the colour whose direction from white is nearest (blends
    with white at the rim keep the direction)."""
    B, H, W, _ = images.shape
    C = len(PANNUKE_TYPE_ORDER)
    binary = np.zeros((B, H, W), np.float32)
    hv = np.zeros((B, 2, H, W), np.float32)
    typ = np.zeros((B, C, H, W), np.float32)
    dirs = np.stack([DEFICIT[c] / np.linalg.norm(DEFICIT[c]) for c in CLASSES])
    idx = np.array([PANNUKE_TYPE_ORDER.index(c) for c in CLASSES])
    for b in range(B):
        d = 255.0 - images[b].astype(np.float64)
        fg = d.sum(-1) > 120
        binary[b] = fg
        hv[b] = hv_map(ndi.label(fg)[0])
        cls = np.where(fg, idx[np.argmax(d @ dirs.T, axis=-1)], 0)
        typ[b] = np.eye(C, dtype=np.float32)[cls].transpose(2, 0, 1)
    return inference.Maps(binary, hv, typ, np.full((B, 19), 1 / 19, np.float32))


@pytest.fixture
def perfect_model(monkeypatch):
    monkeypatch.setattr(inference, "predict_maps", colour_maps)
    return None  # the stub ignores the model


def disc_scene(W, H, centres, radii, classes):
    """White RGB image with filled class-coloured discs, and its truth: instance map, classes."""
    rgb = np.full((H, W, 3), 255, np.uint8)
    inst = np.zeros((H, W), np.int32)
    yy, xx = np.mgrid[:H, :W]
    for i, ((cx, cy), r, c) in enumerate(zip(centres, radii, classes), 1):
        m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        rgb[m] = CLASS_COLOURS[c]
        inst[m] = i
    return rgb, inst


def place_discs(W, H, fixed, n, rng, rmin=6, rmax=12, gap=4):
    """Disc centres (ints) and radii: the ``fixed`` centres first, then ``n`` random ones, none touching."""
    centres, radii = [], []
    todo = [(x, y, int(rng.integers(rmin, rmax + 1))) for x, y in fixed]
    while len(centres) < len(fixed) + n:
        x, y, r = todo.pop(0) if todo else (int(rng.integers(0, W)), int(rng.integers(0, H)),
                                            int(rng.integers(rmin, rmax + 1)))
        if all((x - a) ** 2 + (y - b) ** 2 > (r + q + gap) ** 2 for (a, b), q in zip(centres, radii)):
            centres.append((x, y))
            radii.append(r)
        else:
            assert len(centres) >= len(fixed), "fixed discs must not touch"
    return centres, radii


def truth_table(inst, classes):
    ids = np.arange(1, inst.max() + 1)
    present = ndi.sum_labels(np.ones_like(inst), inst, ids) > 0
    cy, cx = np.array(ndi.center_of_mass(np.ones_like(inst), inst, ids[present])).T
    area = ndi.sum_labels(np.ones_like(inst), inst, ids[present])
    return cx, cy, area, np.asarray(classes)[present]


def match(pred_xy, true_xy, tol):
    """Index of the prediction for each truth (asserting one-to-one within ``tol`` px)."""
    dist, j = cKDTree(pred_xy).query(true_xy)
    assert dist.max() <= tol, f"truth nucleus {int(np.argmax(dist))} missed by {dist.max():.2f} px"
    assert len(np.unique(j)) == len(j), "two truth nuclei matched one prediction"
    return j


# ------------------------------------------------------------------ tiling

@pytest.fixture
def scene():
    """600 x 500 px, tiles 256 / overlap 64: stride 192, central regions split at 224 and 416;
    discs placed on those seams, on tile edges (192, 256, 384, 448) and on the image border."""
    rng = np.random.default_rng(5)
    seams = [224, 416, 192, 256, 384, 448]
    fixed = [(s, 60 + 75 * i) for i, s in enumerate(seams)] + [(100 + 85 * i, s) for i, s in enumerate(seams[:5])]
    fixed += [(223, 224), (416, 415), (3, 250), (597, 470), (300, 498)]
    centres, radii = place_discs(600, 500, fixed, 60, rng)
    classes = [CLASSES[i % 4] for i in range(len(centres))]
    rgb, inst = disc_scene(600, 500, centres, radii, classes)
    return rgb, inst, classes


def test_tiles_cover_the_image():
    assert tile_origins(600, 256, 64).tolist() == [0, 192, 384]
    assert tile_origins(256, 256, 64).tolist() == [0]
    assert tile_origins(100, 256, 64).tolist() == [0]
    assert tile_origins(257, 256, 64).tolist() == [0, 192]


def test_tiling_reports_each_nucleus_once_where_it_is(perfect_model, scene):
    rgb, inst, classes = scene
    calls = []
    pred = predict_image(None, rgb, tile=256, overlap=64, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (9, 9)
    cx, cy, area, cls = truth_table(inst, classes)
    assert len(pred) == len(cx), f"{len(pred)} nuclei predicted, {len(cx)} in the image"
    assert pred["id"].tolist() == list(range(1, len(pred) + 1))
    j = match(pred[["x", "y"]].to_numpy(), np.c_[cx, cy], tol=1e-6)
    assert pred["class_name"].to_numpy()[j].tolist() == cls.tolist()
    assert np.array_equal(pred["area"].to_numpy()[j], area)
    for k, c in zip(j, range(1, len(cx) + 1)):
        ring = pred["contour"].iloc[k]
        rows, cols = np.nonzero(inst == c)
        assert ring.min(0).tolist() == [cols.min(), rows.min()] and ring.max(0).tolist() == [cols.max(), rows.max()]
        assert shapely.Polygon(ring).contains(shapely.Point(cx[c - 1], cy[c - 1]))
    assert {"prob_Neoplastic", "prob_Background", "contour", "class"} <= set(pred.columns)


def test_without_the_central_region_rule_seams_duplicate(perfect_model, scene):
    """The same scene with overlap 0 cuts seam nuclei in two: the test above would see it."""
    rgb, inst, classes = scene
    pred = predict_image(None, rgb, tile=256, overlap=0)
    assert len(pred) > len(truth_table(inst, classes)[0])


@pytest.mark.parametrize("W,H,tile,overlap", [(100, 70, 256, 64), (301, 263, 128, 32)])
def test_any_image_size(perfect_model, W, H, tile, overlap):
    rng = np.random.default_rng(W)
    centres, radii = place_discs(W, H, [(W // 2, H // 2)], 6 if W > 200 else 2, rng)
    classes = [CLASSES[i % 4] for i in range(len(centres))]
    rgb, inst = disc_scene(W, H, centres, radii, classes)
    pred = predict_image(None, rgb, tile=tile, overlap=overlap)
    cx, cy, _, cls = truth_table(inst, classes)
    j = match(pred[["x", "y"]].to_numpy(), np.c_[cx, cy], tol=1e-6)
    assert len(pred) == len(cx) and pred["class_name"].to_numpy()[j].tolist() == cls.tolist()


def test_image_at_another_pixel_size_maps_back(perfect_model):
    """An image at 0.125 um/px is halved to the model's 0.25 and its nuclei come back in its own pixels."""
    rng = np.random.default_rng(3)
    centres, radii = place_discs(640, 460, [(320, 230)], 20, rng, rmin=12, rmax=22, gap=8)
    centres = [(x + 30, y + 30) for x, y in centres]  # whole: post-processing drops tiny border slivers
    classes = [CLASSES[i % 4] for i in range(len(centres))]
    rgb, inst = disc_scene(700, 520, centres, radii, classes)
    pred = predict_image_at(None, rgb, image_mpp=0.125, mpp=0.25, tile=128, overlap=32)
    cx, cy, area, cls = truth_table(inst, classes)
    j = match(pred[["x", "y"]].to_numpy(), np.c_[cx, cy], tol=0.5)
    assert len(pred) == len(cx) and pred["class_name"].to_numpy()[j].tolist() == cls.tolist()
    assert np.allclose(pred["area"].to_numpy()[j], area, rtol=0.15)


def test_blank_image_and_bad_tiling(perfect_model):
    empty = predict_image(None, np.full((50, 60, 3), 255, np.uint8), min_tissue=0.01)
    assert len(empty) == 0 and {"x", "y", "contour", "prob_Neoplastic"} <= set(empty.columns)
    with pytest.raises(ValueError, match="multiple of 16"):
        predict_image(None, np.zeros((64, 64, 3), np.uint8), tile=100)
    with pytest.raises(ValueError, match="overlap"):
        predict_image(None, np.zeros((64, 64, 3), np.uint8), tile=64, overlap=64)
    with pytest.raises(ValueError, match="RGB uint8"):
        predict_image(None, np.zeros((64, 64), np.uint8))


# ------------------------------------------------------------------ GeoJSON

def check_geojson(gj, nuclei):
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(nuclei)
    ids = [f["id"] for f in gj["features"]]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i).version == 4 for i in ids)
    for f, (_, row) in zip(gj["features"], nuclei.iterrows()):
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = np.array(f["geometry"]["coordinates"][0])
        assert len(f["geometry"]["coordinates"]) == 1 and len(ring) >= 4 and (ring[0] == ring[-1]).all()
        props = f["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": row["class_name"], "color": list(CLASS_COLOURS[row["class_name"]])}
        assert props["measurements"]["area"] == pytest.approx(row["area"])
        # QuPath's origin is the top-left pixel's corner: table coordinates + 0.5
        poly = shapely.Polygon(ring)
        assert poly.area > 0 and poly.contains(shapely.Point(row["x"] + 0.5, row["y"] + 0.5))


def test_geojson_for_qupath(perfect_model, scene, tmp_path, s3_server):
    pred = predict_image(None, scene[0])
    gj = to_geojson(pred, PANNUKE_TYPE_ORDER)
    check_geojson(gj, pred)
    assert set(gj["features"][0]["properties"]["measurements"]) == {"area"} | {f"prob_{c}" for c in PANNUKE_TYPE_ORDER}
    assert gj["features"][0]["geometry"]["coordinates"][0][0] == pytest.approx((pred["contour"][0][0] + 0.5).tolist())
    for url in (str(tmp_path / "out" / "nuclei.geojson"), f"{s3_server}/predict/nuclei.geojson"):
        assert write_geojson(url, pred, PANNUKE_TYPE_ORDER) == len(pred)
        back = storage.read_json(url)
        check_geojson(back, pred)
        assert [f["geometry"] for f in back["features"]] == [f["geometry"] for f in gj["features"]]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["nuclei.geojson"]  # no temporary left
    unclassified = pred.head(2).assign(class_name="Background")
    assert all("classification" not in f["properties"] for f in to_geojson(unclassified)["features"])
    assert to_geojson(pred.head(0)) == {"type": "FeatureCollection", "features": []}


# ------------------------------------------------------------------ slides

@pytest.fixture
def disc_slide(tmp_path):
    """A 1100 x 900 px pyramidal TIFF at 0.125 um/px (resampled 2x down to the model's 0.25) with
    discs on window-core seams and window edges; its lower-right corner is glass."""
    rng = np.random.default_rng(11)
    fixed = [(384, 100), (383, 300), (768, 200), (320, 500), (448, 600), (200, 384), (600, 383), (100, 768),
             (384, 384), (5, 450), (1094, 200)]
    centres, radii = place_discs(660, 900, fixed, 25, rng, rmin=12, rmax=22, gap=8)  # x > 704 is glass
    classes = [CLASSES[i % 4] for i in range(len(centres))]
    rgb, inst = disc_scene(1100, 900, centres, radii, classes)
    url = str(tmp_path / "discs.tif")
    write_pyramid_tiff(url, 1100, 900, lambda x, y, w, h: rgb[y:y + h, x:x + w], mpp=0.125)
    return Slide(WSI(url), 0.125, "discs"), inst, classes


def test_slide_windows_map_back_to_level0_once(perfect_model, disc_slide):
    slide, inst, classes = disc_slide
    said = []
    # model px: cores 192 + 32 context a side = 256 (512 level-0 px); tiles 128 with overlap 32
    pred = predict_slide(None, slide, mpp=0.25, region_size=192, tile=128, overlap=32, progress=said.append)
    assert pred.attrs["regions"] + pred.attrs["skipped"] == 9 and pred.attrs["skipped"] >= 1
    assert len(said) == pred.attrs["regions"] and said[0].startswith("region 1/")
    cx, cy, area, cls = truth_table(inst, classes)
    assert len(pred) == len(cx)
    j = match(pred[["x", "y"]].to_numpy(), np.c_[cx, cy], tol=0.5)
    assert pred["class_name"].to_numpy()[j].tolist() == cls.tolist()
    assert np.allclose(pred["area"].to_numpy()[j], area, rtol=0.15)
    assert np.allclose(pred["area_um2"], pred["area"] * 0.125 ** 2)
    lo = np.array([c.min(0) for c in pred["contour"]])
    true_lo = np.array([(sx.start, sy.start) for sy, sx in ndi.find_objects(inst)])
    assert np.abs(lo[j] - true_lo).max() <= 2

    part = predict_slide(None, slide, region=(300, 250, 500, 400), region_size=192, tile=128, overlap=32)
    inside = (cx >= 299.5) & (cx < 799.5) & (cy >= 249.5) & (cy < 649.5)
    match(part[["x", "y"]].to_numpy(), np.c_[cx, cy][inside], tol=0.5)
    assert len(part) == inside.sum()
    one = predict_slide(None, slide, region_size=192, tile=128, overlap=32, max_regions=1)
    assert one.attrs["regions"] == 1 and one.attrs["box"] == (0, 0, 384, 384)


def test_hest_slide_with_the_tiny_model(hest_root, tmp_path):
    import torch

    from stx_platform.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    ref = list_samples(hest_root)[0]
    slide = open_slide(ref)
    assert slide.mpp == pytest.approx(0.2125) and slide.wsi.width > 1000
    said = []
    box = (300, 200, 600, 520)  # cores of 302 level-0 px: 2 x 2 windows
    pred = predict_slide(model, slide, region=box, region_size=256, batch_size=4, tissue_only=False,
                         class_names=PANNUKE_TYPE_ORDER, progress=said.append)
    assert pred.attrs["regions"] == 4 and len(said) == 4
    x, y = pred["x"].to_numpy(), pred["y"].to_numpy()
    assert ((x >= box[0] - 0.5) & (x < box[0] + box[2] - 0.5) & (y >= box[1] - 0.5) & (y < box[1] + box[3] - 0.5)).all()
    if len(pred):
        pts = np.concatenate(pred["contour"].tolist())
        assert (pts >= -1).all() and (pts[:, 0] <= slide.wsi.width).all() and (pts[:, 1] <= slide.wsi.height).all()
    url = str(tmp_path / "slide.geojson")
    assert write_geojson(url, pred, PANNUKE_TYPE_ORDER) == len(pred)
    back = json.loads(open(url).read())
    assert back["type"] == "FeatureCollection" and len(back["features"]) == len(pred)


# ------------------------------------------------------------------ command line

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from stx_platform.model import build_model
    from stx_platform.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoint_epoch_0001", build_model("tiny"), 0)
    return str(run)


def parse(*argv):
    p = argparse.ArgumentParser(prog="stx")
    add_predict_parser(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["predict", *argv])


def test_cli_on_an_image_and_a_slide(checkpoint, hest_root, tmp_path, capsys):
    ref = list_samples(hest_root)[1]
    png = tmp_path / "he.png"
    Image.fromarray(open_slide(ref).wsi.read_region(400, 300, 300, 260)).save(png)
    out, pic = tmp_path / "img.geojson", tmp_path / "img.png"
    args = parse("--checkpoint", checkpoint, "--image", str(png), "--out", str(out), "--overlay", str(pic),
                 "--device", "cpu", "--batch-size", "4")
    assert args.func is cmd_predict and cmd_predict(args) == 0
    text = capsys.readouterr().out
    gj = json.loads(out.read_text())
    assert f"{len(gj['features'])} nuclei" in text and str(out) in text
    overlay = np.asarray(Image.open(pic))
    assert overlay.shape[0] >= 260 and overlay.shape[1] > 300  # the image plus a legend

    out2, pic2 = tmp_path / "slide.geojson", tmp_path / "slide.png"
    args = parse("--checkpoint", checkpoint, "--slide", ref, "--out", str(out2), "--region", "100", "100", "600", "500",
                 "--max-regions", "1", "--region-size", "256", "--device", "cpu", "--overlay", str(pic2))
    assert cmd_predict(args) == 0
    assert "1 window(s) predicted" in capsys.readouterr().out
    assert json.loads(out2.read_text())["type"] == "FeatureCollection"
    assert np.asarray(Image.open(pic2)).shape[0] > 100


def test_cli_errors_name_the_file(checkpoint, hest_root, tmp_path):
    png = tmp_path / "he.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(png)
    out = str(tmp_path / "x.geojson")
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: no checkpoint")):
        cmd_predict(parse("--checkpoint", missing, "--image", str(png), "--out", out, "--device", "cpu"))
    bad_ckpt = tmp_path / "bad" / "model.pt"
    bad_ckpt.parent.mkdir()
    bad_ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=re.escape(f"{bad_ckpt}: not")):
        cmd_predict(parse("--checkpoint", str(bad_ckpt), "--image", str(png), "--out", out, "--device", "cpu"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'gone.png'}: no such image")):
        cmd_predict(parse("--checkpoint", checkpoint, "--image", str(tmp_path / "gone.png"), "--out", out))
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=re.escape(f"{junk}: not a readable")):
        cmd_predict(parse("--checkpoint", checkpoint, "--image", str(junk), "--out", out))
    with pytest.raises(FileNotFoundError, match="no such slide"):
        cmd_predict(parse("--checkpoint", checkpoint, "--slide", str(tmp_path / "gone.tif"), "--out", out))
    with pytest.raises(ValueError, match="junk.jpg: not a readable TIFF"):
        open_slide(str(junk))
    with pytest.raises(ValueError, match="not a Xenium bundle"):
        open_slide(str(tmp_path))
    root, sid = list_samples(hest_root)[0].split("#")
    with pytest.raises(ValueError, match=r"0\.02125 um/px, is implausible.*--slide-mpp"):
        open_slide(f"{root}/wsis/{sid}.tif")  # HEST's resolution tag is 10x off
    assert open_slide(f"{root}/wsis/{sid}.tif", slide_mpp=0.2125).mpp == 0.2125
    with pytest.raises(SystemExit):
        parse("--checkpoint", checkpoint, "--image", str(png), "--slide", "x.tif", "--out", out)
    assert not (tmp_path / "x.geojson").exists()
