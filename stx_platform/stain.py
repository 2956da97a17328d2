"""H&E stain vectors: the reference pair and Macenko's estimate of an image's own pair.

Optical density (OD) of a pixel is ``-log((RGB + 1) / 256)``; by Beer-Lambert it is a
non-negative mix of one unit OD vector per stain. Macenko et al. (ISBI 2009) find an image's two
vectors from its tissue pixels (OD > ``beta`` in every channel): the plane of the two largest
principal axes of their OD holds both stains, and the robust extremes (``alpha`` and 100 -
``alpha`` percentiles) of the pixels' angles in that plane are the purest haematoxylin and eosin.
Used by the stain augmentation (:mod:`stx_platform.training.augmentation`) to perturb each patch
in its own stain basis, and by the synthetic renderer's table of real slides' vectors.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok & Johnston (2001) OD vectors, unit rows: haematoxylin, eosin and their residual
RUIFROK = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
RUIFROK = RUIFROK / np.linalg.norm(RUIFROK, axis=1, keepdims=True)
#: the reference (H, E) pair
REFERENCE = RUIFROK[:2]
#: optical density of each uint8 level
OD_LUT = -np.log((np.arange(256) + 1.0) / 256.0)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in 0..255 -> (..., 3) float64 optical density ``-log((x + 1) / 256)``."""
    rgb = np.asarray(rgb)
    return OD_LUT[rgb] if rgb.dtype == np.uint8 else -np.log((rgb.astype(np.float64) + 1.0) / 256.0)


def concentrations(rgb: np.ndarray, he: np.ndarray) -> np.ndarray:
    """(..., 2) H and E concentration of each pixel of ``rgb`` in the stain pair ``he`` (least
    squares: the OD in the basis of :func:`basis`, residual dropped)."""
    return optical_density(rgb) @ np.linalg.inv(basis(he))[:, :2]


def basis(he: np.ndarray) -> np.ndarray:
    """(3, 3) rows H, E and the residual direction (unit, orthogonal to both; Ruifrok's third row)."""
    he = np.asarray(he, np.float64)
    r = np.cross(he[0], he[1])
    r = r if r.sum() >= 0 else -r
    return np.vstack([he, r / np.linalg.norm(r)])


def macenko(rgb: np.ndarray, beta: float = 0.15, alpha: float = 1.0, min_pixels: int = 500,
            min_angle_deg: float = 5.0, step: int = 2) -> np.ndarray | None:
    """Macenko's (2, 3) unit OD vectors (rows H, E) of an RGB image (H, W, 3), or None where the
    image cannot give them: fewer than ``min_pixels`` tissue pixels (mostly glass), or two
    extremes less than ``min_angle_deg`` apart (one stain only). Every ``step``-th pixel in each
    direction is used (the estimate is a percentile; a quarter of a 256 px patch gives the same)."""
    od = optical_density(np.asarray(rgb)[::step, ::step]).reshape(-1, 3)
    od = od[(od > beta).all(1)]
    if len(od) < min_pixels:
        return None
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]                          # the two largest axes (eigh sorts ascending)
    plane = plane * np.where(plane.sum(0) < 0, -1.0, 1.0)
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v = [plane @ np.array([np.cos(a), np.sin(a)]) for a in (lo, hi)]
    if np.degrees(hi - lo) < min_angle_deg:
        return None
    v = [x * (1.0 if x.sum() >= 0 else -1.0) for x in v]
    h, e = (v[0], v[1]) if v[0][0] > v[1][0] else (v[1], v[0])   # haematoxylin absorbs more red
    out = np.clip(np.vstack([h, e]), 1e-3, None)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two OD vectors, in degrees."""
    c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def tilt(v: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Unit OD vector ``v`` turned by an angle uniform in [0, ``max_deg``] towards a uniformly
    random perpendicular direction; components kept positive (an absorbance cannot be negative)."""
    v = np.asarray(v, np.float64) / np.linalg.norm(v)
    d = rng.normal(size=3)
    d -= d.dot(v) * v
    d /= max(np.linalg.norm(d), 1e-12)
    a = np.radians(rng.uniform(0.0, max_deg))
    out = np.clip(np.cos(a) * v + np.sin(a) * d, 1e-3, None)
    return out / np.linalg.norm(out)
