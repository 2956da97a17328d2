"""Annotated tile folders (NuCLS and the like): reading, resampling to the model's pixel size,
class names from type codes, clear errors; ``stx evaluate --tiles`` on a perfect model, on the
post-processing round trip and on the real NuCLS tiles."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED, need
from stx_platform.errors import SampleError
from stx_platform.sources.tiles import UNLABELLED, TileFolder
from test_predict import colour_maps, disc_scene, place_discs

NUCLS = SHARED / "data" / "real" / "nucls_breast"


def write_tile(folder, name, rgb, inst, types=None):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / f"{name}.png")
    np.save(folder / f"{name}_inst.npy", inst)
    if types is not None:
        np.save(folder / f"{name}_type.npy", types)


def scene(W, H, seed, classes=("Neoplastic", "Inflammatory")):
    """Class-coloured discs on white; type codes 1 / 2 for the two classes given."""
    rng = np.random.default_rng(seed)
    centres, radii = place_discs(W, H, [], max(2, W * H // 1200), rng)
    cls = [classes[i % 2] for i in range(len(centres))]
    rgb, inst = disc_scene(W, H, centres, radii, cls)
    lut = np.array([0] + [1 + classes.index(c) for c in cls], np.uint8)
    return rgb, inst, lut[inst]


def test_a_tile_folder_is_read_resampled_and_its_type_codes_named(tmp_path):
    rgb, inst, types = scene(96, 64, 0)                          # at 0.5 um/px: 192 x 128 at the model's 0.25
    write_tile(tmp_path / "tiles", "a", rgb, inst, types)
    rgb2, inst2, _ = scene(120, 72, 1)
    write_tile(tmp_path / "tiles" / "sub", "b", rgb2, inst2)      # no type map: every nucleus unlabelled
    tiles = TileFolder(str(tmp_path / "tiles"), mpp=0.5, type_names=["Non-Tumor", "Neoplastic"])
    assert tiles.names == ["a", "sub/b"] and len(tiles) == 2
    a = tiles[0]
    assert a.image.shape == (128, 192, 3) and a.instances.shape == (128, 192) and a.tissue == "tiles"
    assert set(np.unique(a.instances)) - {0} == set(np.unique(inst)) - {0}
    assert sorted(set(a.classes.values())) == sorted({UNLABELLED, "Neoplastic"})   # code 1 names no class
    b = tiles[1]
    assert b.image.shape == (144, 240, 3)                          # 240 x 144: multiples of 16 already
    assert set(b.classes.values()) == {UNLABELLED}
    # padded to a multiple of 16 px with white and background
    c = TileFolder(str(tmp_path / "tiles"), mpp=0.25)[1]
    assert c.image.shape == (80, 128, 3) and (c.image[72:] == 255).all() and (c.instances[:, 120:] == 0).all()


def test_bad_tile_folders_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(SampleError, match="no tiles"):
        (tmp_path / "empty").mkdir()
        TileFolder(str(tmp_path / "empty"))
    rgb, inst, types = scene(64, 64, 2)
    write_tile(tmp_path / "t", "x", rgb, inst[:32], types)
    with pytest.raises(SampleError, match="x_inst.npy.*differ in size"):
        TileFolder(str(tmp_path / "t"))[0]
    write_tile(tmp_path / "u", "y", rgb, inst, types + 1)           # codes 2 and 3
    with pytest.raises(SampleError, match="type code 3.*--type-names"):
        TileFolder(str(tmp_path / "u"), type_names=["Non-Tumor", "Neoplastic"])[0]
    write_tile(tmp_path / "v", "z", rgb, inst)
    np.save(tmp_path / "v" / "z_inst.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SampleError, match="refusing to unpickle"):
        TileFolder(str(tmp_path / "v"))[0]


def test_evaluate_scores_tiles_like_a_fold_and_the_round_trip_is_near_perfect(tmp_path, monkeypatch):
    """A model that predicts what it sees: detection and Neoplastic F1 of 1; the nuclei of type
    code 1 (named Non-Tumor: unlabelled) are detected, and the Inflammatory calls on them are no
    type error (no Inflammatory precision to speak of); the round trip on perfect targets
    recovers the truth."""
    from stx_platform.training import validate

    for i in range(3):
        write_tile(tmp_path / "tiles", f"t{i}", *scene(128, 128, 10 + i, ("Inflammatory", "Neoplastic")))
    tiles = TileFolder(str(tmp_path / "tiles"), type_names=["Non-Tumor", "Neoplastic"])
    monkeypatch.setattr(validate, "predict_maps", colour_maps)
    ev = validate.evaluate(None, tiles, batch_size=2)
    m = ev.metrics
    assert m["f1"] == pytest.approx(1.0) and m["bPQ"] > 0.9
    assert m["f1_Neoplastic"] == pytest.approx(1.0) and m["precision_Inflammatory"] != m["precision_Inflammatory"]
    rt = validate.round_trip(tiles)
    assert rt["bPQ"] > 0.95 and rt["f1"] == pytest.approx(1.0)


def test_real_nucls_tiles_read_and_the_post_processing_recovers_their_nuclei():
    need(NUCLS)
    from stx_platform.training.validate import round_trip

    tiles = TileFolder(str(NUCLS), type_names=["Non-Tumor", "Neoplastic"])
    assert len(tiles) == 15
    counts = [len(tiles[i].classes) for i in range(len(tiles))]
    assert min(counts) >= 19 and max(counts) <= 87
    kinds = set().union(*(set(tiles[i].classes.values()) for i in range(len(tiles))))
    assert kinds == {"Neoplastic", UNLABELLED}
    rt = round_trip(tiles)
    assert rt["bPQ"] > 0.95 and rt["f1"] > 0.97, rt


def test_stx_evaluate_on_the_real_tiles_writes_metrics_and_overlays(tmp_path, capsys):
    need(NUCLS)
    import torch

    from stx_platform.cli import main
    from stx_platform.model import build_model
    from stx_platform.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "checkpoint_epoch_0001", build_model("tiny"), 0)
    out = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--tiles", str(NUCLS), "--type-names",
                 "Non-Tumor,Neoplastic", "--out", str(out), "--limit", "4", "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert {"bPQ", "dice", "f1", "precision", "recall", "round_trip_bPQ"} <= set(m)
    assert m["round_trip_bPQ"] > 0.95
    assert Image.open(io.BytesIO((out / "overlays.png").read_bytes())).size[0] > 500
    assert "round_trip_bPQ" in capsys.readouterr().out
