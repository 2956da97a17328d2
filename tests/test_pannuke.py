"""Synthetic PanNuke fold: files in PanNuke's format, and the fold reader."""

import shutil

import numpy as np

from stx_platform.sources.pannuke import PanNukeFold, split_mask
from stx_platform.taxonomy import PANNUKE_CHANNELS


def test_fold_files_follow_pannuke(pannuke_dir):
    images = np.load(f"{pannuke_dir}/images.npy")
    masks = np.load(f"{pannuke_dir}/masks.npy")
    types = np.load(f"{pannuke_dir}/types.npy")
    assert images.shape == (14, 256, 256, 3) and images.dtype == np.uint8
    assert masks.shape == (14, 256, 256, 6) and types.shape == (14,) and types.dtype.kind == "U"
    nuclear = (masks[..., :5] > 0).any(-1)
    assert np.array_equal(masks[..., 5] == 1, ~nuclear)               # channel 5 = background
    assert ((masks[..., :5] > 0).sum(-1) <= 1).all()                  # one class per pixel
    for m in masks:                                                   # ids unique across channels
        ids = [set(np.unique(m[..., c])) - {0} for c in range(5)]
        assert sum(len(i) for i in ids) == len(set().union(*ids))
    assert (masks[..., 3] > 0).any()                                  # some Dead nuclei
    assert np.median([len(np.unique(m[..., :5])) - 1 for m in masks]) >= 10  # cellular fields
    assert set(types) <= {"Breast", "Colon", "Kidney", "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate",
                          "Skin", "Stomach", "Thyroid", "Uterus"}


def test_reader_round_trip(pannuke_dir):
    fold = PanNukeFold(pannuke_dir)
    masks = np.load(f"{pannuke_dir}/masks.npy")
    assert len(fold) == 14
    item = fold[5]
    assert np.array_equal(item.image, np.load(f"{pannuke_dir}/images.npy")[5])
    inst, classes = split_mask(masks[5])
    assert np.array_equal(item.instances, inst) and item.classes == classes
    for k, c in classes.items():  # each instance sits in its class's channel
        assert (masks[5][..., PANNUKE_CHANNELS.index(c)][inst == k] > 0).all()


def test_release_layout_and_float_images(pannuke_dir, tmp_path):
    """The fold as PanNuke releases it: Fold 1/images/fold1/{images,types}.npy, masks/fold1/masks.npy,
    images stored as float64."""
    root = tmp_path / "Fold 1"
    (root / "images" / "fold1").mkdir(parents=True)
    (root / "masks" / "fold1").mkdir(parents=True)
    np.save(root / "images" / "fold1" / "images.npy", np.load(f"{pannuke_dir}/images.npy").astype(np.float64))
    shutil.copy(f"{pannuke_dir}/types.npy", root / "images" / "fold1" / "types.npy")
    np.save(root / "masks" / "fold1" / "masks.npy", np.load(f"{pannuke_dir}/masks.npy").astype(np.float64))
    fold = PanNukeFold(str(root))
    ref = PanNukeFold(pannuke_dir)
    assert np.array_equal(fold[3].image, ref[3].image) and np.array_equal(fold[3].instances, ref[3].instances)


def test_validation_stain_differs_from_training_slides(pannuke_dir, hest_root):
    from stx_platform.sources.hest import list_hest_samples, read_hest_sample

    val = np.load(f"{pannuke_dir}/images.npy").reshape(-1, 3).astype(float)
    s = read_hest_sample(hest_root, list_hest_samples(hest_root)[0])
    train = s.wsi.read_region(s.wsi.width // 3, s.wsi.height // 3, 512, 512).reshape(-1, 3).astype(float)
    val, train = val[val.mean(1) < 225], train[train.mean(1) < 225]
    # PanNuke style: redder eosin (less blue in the pink), so the B/R balance differs clearly
    assert abs((val[:, 2] / val[:, 0]).mean() - (train[:, 2] / train[:, 0]).mean()) > 0.05
