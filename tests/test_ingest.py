"""Training ingest: labels joined by cell id, augmentation that keeps image and instance map
aligned, targets computed after augmentation, batches from a real shard, and the Ray Data
pipeline with a label set that has Unknown cells."""


import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stx_platform.build import slide as B
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
    assert I.instance_classes(["c1"], None).tolist() == ["Background", UNKNOWN]
    _, inst = _pattern()
    inst = inst.copy()
    inst[0:2, 30:40] = 4
    t = targets(inst, cls)["type"]
    assert np.array_equal(t == -1, np.isin(inst, [2, 3]))
    assert (t[inst == 1] == PANNUKE_TYPE_ORDER.index("Epithelial")).all()
    assert (t[inst == 4] == PANNUKE_TYPE_ORDER.index("Inflammatory")).all() and (t[inst == 0] == 0).all()


def test_load_labels_reads_the_manifest_label_tables(dataset):
    out, rec = dataset
    own, edited = I.load_labels(out), I.load_labels(out, EDITED)
    assert set(own) == set(edited) == {rec.sample_id}
    a, b = own[rec.sample_id], edited[rec.sample_id]
    assert (a.index == b.index).all() and (b[a == "Connective"] == UNKNOWN).all() and (b != "Connective").all()
    lazy = I.LabelLookup(out, EDITED)
    assert list(lazy) == [rec.sample_id] and lazy[rec.sample_id].equals(b)


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
    cfg = I.AugmentConfig().geometric_only()
    seen = set()
    for seed in range(40):
        a_img, a_inst = I.augment(img, inst, np.random.default_rng(seed), cfg)
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
        a_img, a_inst = I.augment(img, inst, np.random.default_rng(seed))
        assert a_img.dtype == np.uint8 and a_img.shape == img.shape
        assert np.array_equal(a_img.mean(axis=2) < 140, a_inst > 0)              # dark nuclei on foreground
        geo = [tm for tm in _dihedral(inst) if np.array_equal(tm, a_inst)]
        assert geo                                                                # inst: geometric only
        changed += not any(np.array_equal(a_img, ti) for ti in _dihedral(img))
    assert changed == 10


def test_stain_jitter_is_identity_at_unit_scale_and_moves_haematoxylin():
    img, _ = _pattern()
    x = img.astype(np.float32)
    assert np.allclose(I.stain_jitter(x, (1, 1), (0, 0)), x, atol=0.05)
    darker = I.stain_jitter(x, (1.3, 1.0), (0, 0))
    nuc = img[..., 2] == 110
    assert (darker[nuc].sum(axis=1) < x[nuc].sum(axis=1)).all()                  # more H -> darker nuclei


def test_targets_are_computed_after_augmentation(dataset, records):
    out, rec = dataset
    labels = I.load_labels(out)
    i = int(np.argmax([len(c) for c in records["cell_ids"]]))
    row = _row(records, i)
    for seed in range(4):
        s = I.make_sample(row, labels, np.random.default_rng(seed), augment=True)
        a_img, a_inst = I.augment(decode_image(row["image"]), decode_instance_map(row["instance_map"]),
                                  np.random.default_rng(seed))
        want = targets(a_inst, I.instance_classes(row["cell_ids"], labels[rec.sample_id]))
        assert np.array_equal(s["hv"], want["hv"]) and np.array_equal(s["hv"], hv_map(a_inst))
        assert np.array_equal(s["type"], want["type"]) and np.array_equal(s["binary"], want["binary"])
        assert np.array_equal(s["image"], I.normalise(a_img))


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
    assert b["image"].shape == (n, 3, h, h) and b["image"].dtype == np.float32
    assert b["binary"].shape == (n, h, h) and b["binary"].dtype == np.int64
    assert b["hv"].shape == (n, 2, h, h) and b["hv"].dtype == np.float32
    assert b["type"].shape == (n, h, h) and b["type"].dtype == np.int64
    assert b["tissue"].shape == (n,) and b["tissue"].dtype == np.int64
    assert np.abs(b["hv"]).max() <= 1 and ((b["type"] == -1) <= (b["binary"] == 1)).all()
    # the same seed gives the same batch whatever the batching; another epoch another augmentation
    again = I.transform_batch({k: v[:2] for k, v in records.items()}, labels, seed=3, augment=True)
    assert np.array_equal(again["hv"], b["hv"][:2]) and np.array_equal(again["image"], b["image"][:2])
    other = I.transform_batch({k: v[:2] for k, v in records.items()}, labels, seed=3, epoch=1)
    assert not np.array_equal(other["image"], b["image"][:2])
    # geometric augmentation permutes pixels: class histograms equal those without augmentation
    plain = I.transform_batch(records, labels, augment=False, keep_ids=True)
    assert np.array_equal(np.bincount(b["type"].ravel() + 1), np.bincount(plain["type"].ravel() + 1))
    assert plain["patch_id"].tolist() == [str(p) for p in records["patch_id"]]


# ---------------------------------------------------------------- Ray Data

@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_training_dataset_streams_torch_batches(dataset, records, ray_local):
    import torch

    out, rec = dataset
    ds = I.training_dataset(out, EDITED, augment=True, seed=1, batch_size=8)
    n, h = len(records["image"]), PatchConfig().size
    seen, hist = 0, np.zeros(len(PANNUKE_TYPE_ORDER) + 1, np.int64)
    for b in ds.iter_torch_batches(batch_size=4):
        k = b["image"].shape[0]
        assert 1 <= k <= 4 and b["image"].shape == (k, 3, h, h) and b["image"].dtype == torch.float32
        assert b["hv"].shape == (k, 2, h, h) and b["type"].shape == (k, h, h) and b["binary"].shape == (k, h, h)
        assert b["type"].dtype == torch.int64 and b["tissue"].shape == (k,)
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
