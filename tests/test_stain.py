"""Stain vectors: Macenko's estimate recovers the vectors an image was stained with, is stable
across real slides, declines images that cannot give it; jitter in a patch's own basis changes
one stain without leaking into the other, where the fixed reference basis does not."""

import numpy as np
import pytest
from PIL import Image

from conftest import REAL_HE, SHARED, need
from stx_platform import stain as S
from stx_platform.training import augmentation as A

NUCLS = SHARED / "data" / "real" / "nucls_breast"
# a real slide's pair, unlike Ruifrok's (its E is 25 degrees from Ruifrok's E)
TRUE_HE = np.array([[0.59, 0.72, 0.37], [0.26, 0.84, 0.47]])
TRUE_HE = TRUE_HE / np.linalg.norm(TRUE_HE, axis=1, keepdims=True)


def stained(he: np.ndarray, seed: int = 0, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image (uint8) mixing H and E by Beer-Lambert: glass, eosin-only stroma, nuclei
    with both, and the (H, E) concentrations per pixel."""
    rng = np.random.default_rng(seed)
    c = np.zeros((size, size, 2))
    c[..., 1] = rng.uniform(0.3, 0.9, (size, size))                     # eosin everywhere ...
    yy, xx = np.mgrid[:size, :size]
    for _ in range(25):                                                  # ... nuclei with haematoxylin
        y, x, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(5, 10)]
        c[..., 0] += ((yy - y) ** 2 + (xx - x) ** 2 < r * r) * rng.uniform(0.8, 1.6)
    c[: size // 8] = 0                                                   # a strip of glass
    od = c @ he
    return np.clip(np.rint(256 * np.exp(-od) - 1), 0, 255).astype(np.uint8), c


def test_macenko_recovers_the_vectors_an_image_was_stained_with():
    for seed in range(3):
        img, _ = stained(TRUE_HE, seed)
        he = S.macenko(img)
        assert he is not None and he.shape == (2, 3)
        assert np.allclose(np.linalg.norm(he, axis=1), 1)
        # every nucleus pixel holds eosin too, so the purest haematoxylin present (the 1st percentile's
        # angle) is a mix a few degrees towards E: Macenko's known bias where no pixel is pure H
        assert S.angle_deg(he[0], TRUE_HE[0]) < 5 and S.angle_deg(he[1], TRUE_HE[1]) < 2


def test_macenko_declines_glass_and_single_stain_images():
    assert S.macenko(np.full((64, 64, 3), 240, np.uint8)) is None
    od = np.random.default_rng(0).uniform(0.3, 0.9, (64, 64, 1)) * TRUE_HE[1]
    assert S.macenko(np.clip(256 * np.exp(-od) - 1, 0, 255).astype(np.uint8)) is None


def test_macenko_on_real_slides_is_stable_and_haematoxylin_first():
    need(NUCLS)
    need(REAL_HE)
    files = sorted(NUCLS.glob("*/*.png")) + [REAL_HE]
    est = [S.macenko(np.asarray(Image.open(f).convert("RGB"))) for f in files]
    assert all(e is not None for e in est)
    est = np.array(est)
    for e in est:
        # H is the vector near Ruifrok's H; E absorbs mostly green
        assert S.angle_deg(e[0], S.REFERENCE[0]) < S.angle_deg(e[0], S.REFERENCE[1])
        assert np.argmax(e[1]) == 1
    mean = est.mean(0)
    assert max(S.angle_deg(e[0], mean[0]) for e in est) < 8
    assert max(S.angle_deg(e[1], mean[1]) for e in est) < 12


def test_tilt_turns_a_vector_by_at_most_the_angle_and_keeps_it_an_absorbance():
    rng = np.random.default_rng(0)
    turns = []
    for v in TRUE_HE:
        for _ in range(200):
            t = S.tilt(v, 8.0, rng)
            assert np.isclose(np.linalg.norm(t), 1) and (t > 0).all()
            turns.append(S.angle_deg(t, v))
    assert max(turns) <= 8.0 + 1e-6 and np.median(turns) > 2


def test_jitter_in_the_patch_basis_changes_one_stain_only():
    """Scaling eosin in the image's own basis scales this slide's eosin by that factor and leaves its
    haematoxylin; in Ruifrok's basis, whose E is 25 degrees off this slide's, the same step scales
    eosin less and moves haematoxylin."""
    img, _ = stained(TRUE_HE, 1)
    own = A.stain_jitter(img, (1.0, 1.4), (0, 0), S.basis(S.macenko(img)))
    ref = A.stain_jitter(img, (1.0, 1.4), (0, 0))
    before = S.concentrations(img, TRUE_HE).reshape(-1, 2)
    tissue = before[:, 1] > 0.2
    after_own, after_ref = (S.concentrations(x, TRUE_HE).reshape(-1, 2) for x in (own, ref))
    assert np.median(after_own[tissue, 1] / before[tissue, 1]) == pytest.approx(1.4, abs=0.02)
    assert np.abs(after_own[tissue, 0] - before[tissue, 0]).mean() < 0.01
    assert np.median(after_ref[tissue, 1] / before[tissue, 1]) < 1.3
    assert np.abs(after_ref[tissue, 0] - before[tissue, 0]).mean() > 0.03


def test_macenko_basis_and_tilt_in_the_augmentation_repeat_with_the_seed_and_keep_glass():
    img, _ = stained(TRUE_HE, 2)
    cfg = A.AugmentConfig(stain_basis="macenko", stain_tilt=6.0, brightness=0, contrast=0, saturation=0,
                          stain_shift=0.0)
    a = A.colour_jitter(img, np.random.default_rng(3), cfg)
    b = A.colour_jitter(img, np.random.default_rng(3), cfg)
    c = A.colour_jitter(img, np.random.default_rng(4), cfg)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    glass = slice(0, 16)
    assert np.abs(a[glass].astype(int) - img[glass]).max() <= 1          # no stain is added to glass
    assert np.abs(a.astype(int) - img).mean() > 1                         # the tissue changed
    with pytest.raises(ValueError, match="stain_basis"):
        A.AugmentConfig(stain_basis="vahadane")
