"""Training ingest: labels joined by cell id, augmentation that keeps image and instance map
aligned, targets computed after augmentation, batches from a real shard, and the Ray Data
pipeline with a label set that has Unknown cells."""


import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from stx_platform.build import slide as B
from stx_platform.stain import OD_LUT
from stx_platform.build.manifest import DONE, write_manifest
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.markers import default_markers
from stx_platform.labels.table import label_table_url, read_label_table, to_arrow, write_label_table
from stx_platform.patches.config import PatchConfig
from stx_platform.patches.schema import decode_image, decode_instance_map
from stx_platform.sources import list_samples
from stx_platform.synth.organs import RECIPES
from stx_platform.targets import hv_map, targets
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER, UNKNOWN
from stx_platform.training import augmentation as A
from stx_platform.training import ingest as I

EDITED = "edited"


@pytest.fixture(scope="module")
def dataset(hest_root, tmp_path_factory):
    """One built slide with a manifest, plus a label set ``edited`` where Connective cells are Unknown."""
    out = str(tmp_path_factory.mktemp("ingest_ds"))
    rec = B.build_slide(list_samples(hest_root)[0], out, PatchConfig(), LabelConfig(), default_markers())
    assert rec.status == DONE, rec.error
    write_manifest(out, [rec], {})
    cells, meta = read_label_table(f"{out}/{rec.label_table}")
    cells = cells.copy()
    cells.loc[cells["label"] == "Connective", "label"] = UNKNOWN
    write_label_table(label_table_url(f"{out}/labels", EDITED, rec.sample_id),
                      to_arrow(cells.reset_index(), {**meta, "label_set_id": EDITED}))
    return out, rec


@pytest.fixture(scope="module")
def records(dataset):
    out, rec = dataset
    t = pq.read_table(f"{out}/{rec.shard}", columns=list(I.READ_COLUMNS))
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def _row(batch, i):
    return {k: v[i] for k, v in batch.items()}


def _dihedral(a):
    """The 8 rotations/flips of a (H, W, ...) array."""
    outs = []
    for k in range(4):
        r = np.rot90(a, k, axes=(0, 1))
        outs += [r, r[:, ::-1]]
    return outs


def _pattern():
    """An asymmetric instance map (three blobs, distinct sizes, off-centre) and an H&E-like image
    with dark nuclei exactly on the foreground; channel 0 encodes the instance id."""
    inst = np.zeros((40, 40), np.int32)
    inst[3:9, 5:15] = 1
    inst[20:33, 25:29] = 2
    inst[30:36, 2:5] = 3
    img = np.full((40, 40, 3), 225, np.uint8)
    img[..., 1] = 190
    fg = inst > 0
    img[fg] = (60, 40, 110)
    img[..., 0][fg] = 40 + inst[fg]
    return img, inst


# ---------------------------------------------------------------- labels

def test_instance_classes_join_cell_ids_and_unknown_becomes_minus_one():
    labels = pd.Series({"c1": "Epithelial", "c3": "Unknown", "c4": "Inflammatory"})
    cls = I.instance_classes(np.array(["c1", "c2", "c3", "c4"]), labels)
    assert cls.tolist() == ["Background", "Epithelial", UNKNOWN, UNKNOWN, "Inflammatory"]
    assert I.instance_classes([], labels).tolist() == ["Background"]
    assert I.instance_classes([b"c1", "c2", "c4"], labels.to_dict()).tolist() == cls[[0, 1, 2, 4]].tolist()
    assert I.instance_classes(["c1"], None).tolist() == ["Background", UNKNOWN]
    _, inst = _pattern()
    inst = inst.copy()
    inst[0:2, 30:40] = 4
    t = targets(inst, cls)["type"]
    assert np.array_equal(t == -1, np.isin(inst, [2, 3]))
    assert (t[inst == 1] == PANNUKE_TYPE_ORDER.index("Epithelial")).all()
    assert (t[inst == 4] == PANNUKE_TYPE_ORDER.index("Inflammatory")).all() and (t[inst == 0] == 0).all()


def test_join_to_class_indices_equals_the_join_by_names(dataset, records):
    out, rec = dataset
    lookup = I.LabelLookup(out, EDITED)
    types, names = lookup.type_by_cell(rec.sample_id), lookup.by_cell(rec.sample_id)
    index = {**{c: i for i, c in enumerate(PANNUKE_TYPE_ORDER)}, UNKNOWN: -1}
    for ids in list(records["cell_ids"][:8]) + [np.array(["nope", *records["cell_ids"][0][:3]], object)]:
        want = [0] + [index[c] for c in I.instance_classes(ids, names)[1:]]
        got = I.instance_types(ids, types)
        assert got.dtype == np.int64 and got.tolist() == want
        assert I.instance_types([c.encode() for c in ids], types).tolist() == want     # bytes ids too
    assert -1 in I.instance_types(records["cell_ids"][0], {}).tolist() or not len(records["cell_ids"][0])
    assert lookup.type_by_cell("no-such-slide") is None
    odd = I.LabelLookup(out, EDITED)
    odd._dicts[rec.sample_id] = {"c1": "Weird"}                 # a class that is no PanNuke type: names path
    assert odd.type_by_cell(rec.sample_id) is None
    assert I._classes(["c1"], odd, rec.sample_id).tolist() == ["Background", "Weird"]


def test_load_labels_reads_the_manifest_label_tables(dataset):
    out, rec = dataset
    own, edited = I.load_labels(out), I.load_labels(out, EDITED)
    assert set(own) == set(edited) == {rec.sample_id}
    a, b = own[rec.sample_id], edited[rec.sample_id]
    assert (a.index == b.index).all() and (b[a == "Connective"] == UNKNOWN).all() and (b != "Connective").all()
    lazy = I.LabelLookup(out, EDITED)
    assert list(lazy) == [rec.sample_id] and lazy[rec.sample_id].equals(b)
    assert lazy.by_cell(rec.sample_id) == b.to_dict() and lazy.by_cell("not-a-slide") is None
    assert lazy[rec.sample_id].equals(b)                     # read again after the dict took its place


def test_tissue_index_follows_pannuke_names():
    assert len(I.PANNUKE_TISSUES) == 19
    for r in RECIPES.values():
        want = I.PANNUKE_TISSUES.index(r.pannuke_tissue) if r.pannuke_tissue in I.PANNUKE_TISSUES else -1
        assert I.tissue_index(r.hest_organ) == want, r.key
    assert I.tissue_index("Bowel") == I.PANNUKE_TISSUES.index("Colon")
    assert I.tissue_index("Bladder") == 2 and I.tissue_index("bile duct") == 1
    assert I.tissue_index("Lymphoid") == -1 and I.tissue_index("Heart") == -1 and I.tissue_index(None) == -1


# ---------------------------------------------------------------- augmentation

def test_geometric_augmentation_moves_image_and_instance_map_together():
    img, inst = _pattern()
    cfg = A.AugmentConfig().geometric_only()
    seen = set()
    for seed in range(40):
        a_img, a_inst = A.augment(img, inst, np.random.default_rng(seed), cfg)
        fg = a_inst > 0
        assert np.array_equal(a_img[..., 0][fg], 40 + a_inst[fg])             # every pixel keeps its id
        assert (a_img[~fg] == img[0, 0]).all()
        match = [i for i, (ti, tm) in enumerate(zip(_dihedral(img), _dihedral(inst)))
                 if np.array_equal(ti, a_img) and np.array_equal(tm, a_inst)]
        assert len(match) == 1                                                    # one exact transform of both
        seen.add(match[0])
    assert seen == set(range(8))


def test_colour_jitter_keeps_nuclei_dark_and_only_touches_the_image():
    img, inst = _pattern()
    changed = 0
    for seed in range(10):
        a_img, a_inst = A.augment(img, inst, np.random.default_rng(seed))
        assert a_img.dtype == np.uint8 and a_img.shape == img.shape
        assert np.array_equal(a_img.mean(axis=2) < 140, a_inst > 0)              # dark nuclei on foreground
        geo = [tm for tm in _dihedral(inst) if np.array_equal(tm, a_inst)]
        assert geo                                                                # inst: geometric only
        changed += not any(np.array_equal(a_img, ti) for ti in _dihedral(img))
    assert changed == 10


def _big_pattern():
    """A 128 px image of 16 square nuclei (ids 1..16) on pale background; each nucleus has its
    own colour, so any pixel says which id the image put there."""
    inst = np.zeros((128, 128), np.int32)
    img = np.full((128, 128, 3), (225, 190, 225), np.uint8)
    for k in range(16):
        r, c = divmod(k, 4)
        inst[8 + 32 * r:24 + 32 * r, 6 + 32 * c:26 + 32 * c] = k + 1
        img[inst == k + 1] = (40 + 10 * k, 40, 110)
    return img, inst


@pytest.mark.parametrize("op", ["p_sized_crop", "p_elastic"])
def test_crop_and_warp_move_the_instance_map_with_the_image(op):
    """Nuclei stay where the image puts them (ids never blended), nothing new appears, and
    crops enlarge nuclei; the colour ops are off, so the image is the warped pattern."""
    img, inst = _big_pattern()
    cfg = A.AugmentConfig(rot90=False, p_hflip=0, p_vflip=0, brightness=0, contrast=0, saturation=0, stain_scale=0,
                          stain_shift=0, **{op: 1.0})
    moved = 0
    for seed in range(6):
        a_img, a_inst = A.augment(img, inst, np.random.default_rng(seed), cfg)
        assert a_img.shape == img.shape and a_inst.shape == inst.shape and a_img.dtype == np.uint8
        assert set(np.unique(a_inst)) <= set(np.unique(inst))
        fg = a_inst > 0
        inner = ndimage.binary_erosion(fg, iterations=2)
        assert (a_img[..., 0][inner] == 30 + 10 * a_inst[inner]).mean() > 0.98          # the image's id
        assert (a_img[..., 2][~ndimage.binary_dilation(fg, iterations=2)] == 225).mean() > 0.98
        moved += not np.array_equal(a_inst, inst)
        if op == "p_sized_crop":
            assert np.bincount(a_inst.ravel())[1:].max() >= (inst == 1).sum()          # never shrunk
    assert moved == 6


def test_quality_ops_touch_the_image_only_and_repeat_with_the_seed():
    img, inst = _big_pattern()
    cfg = A.AugmentConfig(rot90=False, p_hflip=0, p_vflip=0, p_downscale=1.0, p_blur=1.0, p_noise=1.0,
                          p_zoom_blur=1.0)
    a = A.augment(img, inst, np.random.default_rng(7), cfg)
    assert np.array_equal(a[1], inst) and not np.array_equal(a[0], img)
    b = A.augment(img, inst, np.random.default_rng(7), cfg)
    assert np.array_equal(a[0], b[0])
    c = A.augment(img, inst, np.random.default_rng(8), cfg)
    assert not np.array_equal(a[0], c[0])
    # blur and noise: nuclei stay darker than the background they sit on
    nuc, bg = inst > 0, ~ndimage.binary_dilation(inst > 0, iterations=6)
    assert a[0][nuc].mean() < a[0][bg].mean() - 60
    assert A.AugmentConfig.cellvit().quality_ops() and not A.AugmentConfig().quality_ops()


def test_stain_jitter_is_identity_at_unit_scale_and_moves_haematoxylin():
    img, _ = _pattern()
    x = img.astype(np.float32)
    assert np.allclose(A.stain_jitter(x, (1, 1), (0, 0)), x, atol=0.05)
    darker = A.stain_jitter(x, (1.3, 1.0), (0, 0))
    nuc = img[..., 2] == 110
    assert (darker[nuc].sum(axis=1) < x[nuc].sum(axis=1)).all()                  # more H -> darker nuclei


def test_targets_are_computed_after_augmentation(dataset, records):
    out, rec = dataset
    labels = I.load_labels(out)
    i = int(np.argmax([len(c) for c in records["cell_ids"]]))
    row = _row(records, i)
    for seed in range(4):
        s = I.make_sample(row, labels, np.random.default_rng(seed), augment=True)
        a_img, a_inst = A.augment(decode_image(row["image"]), decode_instance_map(row["instance_map"]),
                                  np.random.default_rng(seed))
        want = targets(a_inst, I.instance_classes(row["cell_ids"], labels[rec.sample_id]))
        assert np.array_equal(s["hv"], want["hv"]) and np.array_equal(s["hv"], hv_map(a_inst))
        assert np.array_equal(s["type"], want["type"]) and np.array_equal(s["binary"], want["binary"])
        assert np.array_equal(s["image"], A.normalise(a_img))


def test_make_sample_shapes_dtypes_and_normalisation(dataset, records):
    out, rec = dataset
    labels = I.load_labels(out, EDITED)
    row = _row(records, int(np.argmax([len(c) for c in records["cell_ids"]])))
    s = I.make_sample(row, labels, augment=False)
    img, inst = decode_image(row["image"]), decode_instance_map(row["instance_map"])
    h, w = inst.shape
    assert s["image"].dtype == np.float32 and s["image"].shape == (3, h, w)
    assert np.allclose(s["image"], (img.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5, atol=1e-6)
    assert s["image"].min() >= -1 and s["image"].max() <= 1
    assert s["binary"].dtype == np.uint8 and s["binary"].shape == (h, w)
    assert s["hv"].dtype == np.float32 and s["hv"].shape == (2, h, w)
    assert s["type"].dtype == np.int64 and s["type"].shape == (h, w)
    assert s["tissue"] == I.tissue_index(row["organ"]) and s["tissue"] >= 0
    assert s["sample_id"] == rec.sample_id and s["patch_id"] == row["patch_id"]
    lab = labels[rec.sample_id].reindex(list(row["cell_ids"]))
    unknown = np.flatnonzero((lab == UNKNOWN).to_numpy()) + 1
    assert unknown.size and np.array_equal(s["type"] == -1, np.isin(inst, unknown))


def test_transform_batch_on_a_real_shard(dataset, records):
    out, rec = dataset
    labels = I.load_labels(out, EDITED)
    b = I.transform_batch(records, labels, seed=3, augment=True)
    n, h = len(records["image"]), PatchConfig().size
    # compact dtypes through the object store (0.59 MB per sample, not 2.36 MB)
    assert b["image"].shape == (n, h, h, 3) and b["image"].dtype == np.uint8
    assert b["binary"].shape == (n, h, h) and b["binary"].dtype == np.uint8
    assert b["hv"].shape == (n, 2, h, h) and b["hv"].dtype == np.float16
    assert b["type"].shape == (n, h, h) and b["type"].dtype == np.int8
    assert b["tissue"].shape == (n,) and b["tissue"].dtype == np.int64
    assert sum(b[k][0].nbytes for k in I.SENT_DTYPES) < 0.6e6
    assert np.abs(b["hv"]).max() <= 1 and ((b["type"] == -1) <= (b["binary"] == 1)).all()
    # the same seed gives the same batch whatever the batching; another epoch another augmentation
    again = I.transform_batch({k: v[:2] for k, v in records.items()}, labels, seed=3, augment=True)
    assert np.array_equal(again["hv"], b["hv"][:2]) and np.array_equal(again["image"], b["image"][:2])
    other = I.transform_batch({k: v[:2] for k, v in records.items()}, labels, seed=3, epoch=1)
    assert np.array_equal(again["colour"], b["colour"][:2]) and not np.array_equal(other["colour"], b["colour"][:2])
    # geometric augmentation permutes pixels: class histograms equal those without augmentation
    plain = I.transform_batch(records, labels, augment=False, keep_ids=True)
    assert np.array_equal(np.bincount(b["type"].ravel() + 1), np.bincount(plain["type"].ravel() + 1))
    assert plain["patch_id"].tolist() == [str(p) for p in records["patch_id"]]


# ---------------------------------------------------------------- fast paths vs step-by-step references

def _ref_stain_jitter(rgb, scale, shift):
    """The step-by-step stain jitter (float32 matrix products per pixel), as first implemented."""
    rgb = np.asarray(rgb)
    od = OD_LUT.astype(np.float32)[rgb] if rgb.dtype == np.uint8 else -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    c = od.reshape(-1, 3) @ A._STAIN_INV
    c[:, :2] *= np.asarray(scale[:2], np.float32)
    c[:, :2] += np.asarray(shift[:2], np.float32)
    od2 = (c @ A.STAIN_VECTORS).reshape(rgb.shape)
    return np.clip(256.0 * np.exp(-od2) - 1.0, 0.0, 255.0)


def _ref_colour_jitter(img, rng, cfg):
    """Stain, brightness, contrast, saturation one after the other in float32, as first implemented."""
    if not (cfg.stain_scale or cfg.stain_shift or cfg.brightness or cfg.contrast or cfg.saturation):
        return img
    x = img.astype(np.float32)
    if cfg.stain_scale or cfg.stain_shift:
        x = _ref_stain_jitter(img, rng.uniform(1 - cfg.stain_scale, 1 + cfg.stain_scale, 2),
                              rng.uniform(-cfg.stain_shift, cfg.stain_shift, 2))
    if cfg.brightness:
        x *= np.float32(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness))
    if cfg.contrast:
        m = np.float32(x.mean())
        x = (x - m) * np.float32(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)) + m
    if cfg.saturation:
        grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        x = (x - grey) * np.float32(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)) + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _ref_augment(image, inst, rng, cfg):
    """numpy rot90 / flips of both arrays, then the step-by-step colour jitter."""
    k = int(rng.integers(4)) if cfg.rot90 else 0
    img, ins = np.rot90(image, k, axes=(0, 1)), np.rot90(inst, k, axes=(0, 1))
    if rng.random() < cfg.p_hflip:
        img, ins = img[:, ::-1], ins[:, ::-1]
    if rng.random() < cfg.p_vflip:
        img, ins = img[::-1], ins[::-1]
    return _ref_colour_jitter(np.ascontiguousarray(img), rng, cfg), np.ascontiguousarray(ins)


_CONFIGS = [A.AugmentConfig(), A.AugmentConfig(stain_scale=0.0, stain_shift=0.0),
            A.AugmentConfig(brightness=0.0, contrast=0.3, saturation=0.4), A.AugmentConfig(contrast=0.0),
            A.AugmentConfig(stain_scale=0.3, stain_shift=0.2, brightness=0.5, contrast=0.5, saturation=0.5),
            A.AugmentConfig().geometric_only()]


@pytest.mark.parametrize("cfg", _CONFIGS)
def test_fused_augmentation_equals_the_step_by_step_reference(records, cfg):
    """Same draws from the same generator; instance maps equal, images within 1 grey level (float32
    rounding of the fused colour transform puts a few pixels on the other side of .5)."""
    rng = np.random.default_rng(5)
    pairs = [(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), rng.integers(0, 9, (64, 48)).astype(np.int32))]
    pairs += [(decode_image(records["image"][i]), decode_instance_map(records["instance_map"][i])) for i in range(6)]
    differ = total = 0
    for seed in range(8):
        for img, inst in pairs:
            got = A.augment(img, inst, np.random.default_rng(seed), cfg)
            want = _ref_augment(img, inst, np.random.default_rng(seed), cfg)
            assert np.array_equal(got[1], want[1]) and got[0].dtype == np.uint8 and got[0].shape == want[0].shape
            d = np.abs(got[0].astype(int) - want[0])
            assert d.max() <= 1
            differ, total = differ + int((d > 0).sum()), total + d.size
    assert differ <= 1e-3 * total


def test_stain_jitter_equals_the_reference():
    rng = np.random.default_rng(0)
    for x in (rng.integers(0, 256, (30, 20, 3), dtype=np.uint8), rng.uniform(0, 255, (30, 20, 3)).astype(np.float32)):
        for scale, shift in (((1, 1), (0, 0)), ((1.3, 0.8), (0.05, -0.03)), ((0.5, 2.0), (-0.2, 0.2))):
            got = A.stain_jitter(x, scale, shift)
            assert got.shape == x.shape and got.min() >= 0 and got.max() <= 255
            assert np.abs(got - _ref_stain_jitter(x, scale, shift)).max() < 0.01


def test_geometry_on_the_device_equals_the_cpu_dihedral():
    import torch

    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (8, 6, 6, 3), dtype=np.uint8)
    codes = [(k, h, v) for k in range(4) for h in (False, True) for v in (False, True)]
    for start in (0, 8):
        geo = np.array(codes[start:start + 8], np.int8)
        got = A.apply_geometry(torch.from_numpy(imgs), torch.from_numpy(geo)).numpy()
        for i, (k, h, v) in enumerate(codes[start:start + 8]):
            assert np.array_equal(got[i], A._dihedral(imgs[i], k, h, v)), (k, h, v)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, bool])
def test_dihedral_equals_numpy_rot90_and_flips(dtype):
    rng = np.random.default_rng(1)
    for shape in ((7, 5), (7, 5, 3), (6, 6, 1)):
        a = rng.integers(0, 200, shape).astype(dtype)
        for k in range(4):
            for h in (False, True):
                for v in (False, True):
                    want = np.rot90(a, k, axes=(0, 1))
                    want = want[:, ::-1] if h else want
                    want = want[::-1] if v else want
                    got = A._dihedral(a, k, h, v)
                    assert got.flags.c_contiguous and got.dtype == a.dtype and np.array_equal(got, want)


def test_normalise_into_a_batch_row_and_the_widened_batch_equals_stacked_samples(dataset, records):
    """What the train worker feeds the model and the loss (:func:`to_model` on transform_batch's
    compact arrays) equals :func:`make_sample`'s float32 / int64 samples: the image to float32
    rounding, the targets exactly, hv to fp16's rounding (half a unit in the last place, 2**-11,
    on [-1, 1])."""
    import torch

    img = np.random.default_rng(2).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    want = (img.transpose(2, 0, 1).astype(np.float32) * np.float32(2 / 255)) - np.float32(1)
    batch = np.zeros((2, 3, 16, 12), np.float32)
    assert np.array_equal(A.normalise(img), want)
    assert np.shares_memory(A.normalise(img, batch[1]), batch)
    assert np.array_equal(batch[1], want) and not batch[0].any()
    with pytest.raises(ValueError):
        A.normalise(img, np.zeros((3, 12, 16), np.float32))
    labels = I.load_labels(dataset[0], EDITED)
    sub = {k: v[:5] for k, v in records.items()}
    b = I.transform_batch(sub, labels, seed=4, epoch=[0, 1, 2, 0, 1])
    x, tgt = I.to_model({k: torch.from_numpy(b[k]) for k in I.SENT_DTYPES})
    assert x.dtype == tgt["hv"].dtype == torch.float32
    assert tgt["type"].dtype == tgt["binary"].dtype == tgt["tissue"].dtype == torch.int64
    for i in range(5):
        s = I.make_sample(_row(sub, i), labels, I.patch_rng(4, [0, 1, 2, 0, 1][i], sub["patch_id"][i]))
        assert np.abs(x[i].numpy() - s["image"]).max() < 1e-6
        for k in ("type", "binary"):
            assert np.array_equal(tgt[k][i].numpy(), s[k]), k
        assert np.abs(tgt["hv"][i].numpy() - s["hv"]).max() <= 2.0 ** -11
        # the fp16 hv sent is torch's cast of make_sample's float32 map, bit for bit
        assert np.array_equal(b["hv"][i].view(np.uint16), torch.from_numpy(s["hv"]).half().numpy().view(np.uint16))
        assert tgt["tissue"][i] == s["tissue"]
        # the CPU sends the image as decoded: moving and colouring it is the device's work
        assert np.array_equal(b["image"][i], decode_image(sub["image"][i]))
        assert tuple(b["geometry"][i]) == A._draw_geometric(I.patch_rng(4, [0, 1, 2, 0, 1][i], sub["patch_id"][i]),
                                                            A.AugmentConfig())
    plain = I.transform_batch(sub, labels, seed=4, config=A.AugmentConfig().geometric_only(), augment=False)
    assert "colour" not in plain and "geometry" not in plain
    x, _ = I.to_model({k: torch.from_numpy(v) for k, v in plain.items()})
    assert np.array_equal(x.numpy(), np.stack([A.normalise(im) for im in plain["image"]]))


def test_batch_arrays_are_disjoint_aligned_views_of_one_block():
    b = I._empty_batch(3, 5, 7, colour=True, geometry=True)
    assert set(b) == set(I.SENT_DTYPES)
    for k, a in b.items():
        assert a.dtype == I.SENT_DTYPES[k] and a.flags.c_contiguous and a.ctypes.data % 64 == 0, k
        a[...] = 1
    base = b["image"].base
    assert all(np.shares_memory(a, base) for a in b.values())
    assert not any(np.shares_memory(b[x], b[y]) for x in b for y in b if x < y)
    assert I._empty_batch(0, 0, 0)["hv"].shape == (0, 2, 0, 0)


def test_decode_image_into_a_batch_row(records):
    from stx_platform.patches.schema import encode_image

    data = records["image"][0]
    want = decode_image(data)
    batch = np.zeros((2, *want.shape), np.uint8)
    row = batch[1]
    assert decode_image(data, out=row) is row and np.array_equal(batch[1], want) and not batch[0].any()
    small = np.zeros((4, 4, 3), np.uint8)
    got = decode_image(data, out=small)                      # does not fit: a fresh array, out untouched
    assert got is not small and np.array_equal(got, want) and not small.any()
    jpeg = encode_image(want, "jpeg")
    got = decode_image(jpeg, out=row)                        # other codecs: decoded as usual
    assert got is not row and np.array_equal(got, decode_image(jpeg))


def test_fast_png_decode_equals_cv2_and_falls_back_for_other_pngs(records):
    import io

    import cv2
    from PIL import Image

    from stx_platform.patches import schema as S

    def cv2_rgb(data):
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    for data in records["image"][:8]:
        fast = S._png_rgb8(memoryview(data))
        assert fast is not None and np.array_equal(fast, cv2_rgb(data)) and np.array_equal(decode_image(data), fast)
    img = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    img[::3] = img[::3] // 4 * 4                                         # some rows compress: mixed filters

    def pil(a, **kw):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG", **kw)
        return buf.getvalue()

    others = [pil(img), pil(img[..., 0]), pil(img // 64 * 64, optimize=True), pil(np.dstack([img, img[..., :1]])),
              cv2.imencode(".png", img[..., ::-1].astype(np.uint16) * 257)[1].tobytes(),
              S.encode_image(img, png_compression=9)]
    for data in [S.encode_image(img)] + others:
        assert np.array_equal(decode_image(data), cv2_rgb(data))
    # hand-made PNGs whose rows are filtered None or Sub, mixed (the fast path's own row handling)
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w = img.shape[:2]
    sub = np.diff(img.astype(np.int16), axis=1, prepend=0).astype(np.uint8)
    for use_sub in (np.arange(h) % 2 == 0, np.ones(h, bool), np.zeros(h, bool)):
        rows = [bytes([1]) + sub[r].tobytes() if use_sub[r] else bytes([0]) + img[r].tobytes() for r in range(h)]
        idat = zlib.compress(b"".join(rows))
        data = (S._PNG_SIG + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", idat[:50]) + chunk(b"IDAT", idat[50:]) + chunk(b"IEND", b""))
        assert np.array_equal(S._png_rgb8(memoryview(data)), img) and np.array_equal(cv2_rgb(data), img)
    enc = S.encode_image(img)
    for bad in (enc[:-20], enc[:60]):
        with pytest.raises(ValueError):
            decode_image(bad)


# ---------------------------------------------------------------- Ray Data

@pytest.mark.slow
def test_training_dataset_streams_torch_batches(dataset, records, local_ray):
    import torch

    out, rec = dataset
    ds = I.training_dataset(out, EDITED, augment=True, seed=1, batch_size=8)
    n, h = len(records["image"]), PatchConfig().size
    seen, hist = 0, np.zeros(len(PANNUKE_TYPE_ORDER) + 1, np.int64)
    for b in ds.iter_torch_batches(batch_size=4):
        k = b["image"].shape[0]
        assert 1 <= k <= 4 and b["image"].shape == (k, h, h, 3) and b["image"].dtype == torch.uint8
        assert b["hv"].shape == (k, 2, h, h) and b["type"].shape == (k, h, h) and b["binary"].shape == (k, h, h)
        assert b["type"].dtype == torch.int8 and b["hv"].dtype == torch.float16 and b["tissue"].shape == (k,)
        t, fg = b["type"].numpy(), b["binary"].numpy() == 1
        assert (t[~fg] == 0).all() and (t[fg] != 0).all()
        hist += np.bincount(t.ravel() + 1, minlength=hist.size)
        seen += k
    assert seen == n
    # Unknown pixels (-1) exactly where the edited label set says Unknown: pixel counts per class
    # survive rot/flip, so the streamed histogram equals the one from the labels themselves
    labels = I.load_labels(out, EDITED)[rec.sample_id]
    want = np.zeros_like(hist)
    for i in range(n):
        inst = decode_instance_map(records["instance_map"][i])
        cls = I.instance_classes(records["cell_ids"][i], labels)
        want += np.bincount(targets(inst, cls)["type"].ravel() + 1, minlength=hist.size)
    assert hist[0] > 0 and hist[PANNUKE_TYPE_ORDER.index("Connective") + 1] == 0
    assert np.array_equal(hist, want)
