"""Noise fields for the synthetic tissue.

``smooth_noise`` makes whole-grid random fields (layout). ``value_noise`` is a hash-based
lattice noise evaluated at arbitrary coordinates: the same value at the same place whichever
tile asks, so an image rendered tile by tile has no seams.
"""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance random field on a grid with features about ``scale`` cells wide."""
    h, w = shape
    scale = max(scale, 1.0)
    ch, cw = int(np.ceil(h / scale)) + 3, int(np.ceil(w / scale)) + 3
    coarse = rng.standard_normal((ch, cw)).astype(np.float32)
    big = cv2.resize(coarse, (int(cw * scale), int(ch * scale)), interpolation=cv2.INTER_CUBIC)
    off = int(scale)
    out = big[off: off + h, off: off + w]
    out = cv2.GaussianBlur(out, (0, 0), sigmaX=max(scale / 4, 0.5))
    out = out - out.mean()
    sd = out.std()
    return out / sd if sd > 0 else out


_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) from integer lattice coordinates (splitmix64 finaliser)."""
    with np.errstate(over="ignore"):
        h = (ix.astype(np.int64).view(np.uint64) * _M1) ^ (iy.astype(np.int64).view(np.uint64) * _M2)
        h ^= np.uint64(seed & 0xFFFFFFFF) * _M3
        h ^= h >> np.uint64(30)
        h *= _M2
        h ^= h >> np.uint64(27)
        h *= _M3
        h ^= h >> np.uint64(31)
    return (h >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)


def value_noise(x: np.ndarray, y: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """Smooth noise in about [-1, 1] at float coordinates, with lattice spacing ``scale``.

    Lattice values are hashed from absolute lattice coordinates, then interpolated (bicubic)
    to the query points, so overlapping tiles agree. 2-D inputs use ``cv2.remap`` (fast);
    other shapes fall back to bilinear interpolation in numpy.
    """
    dt = np.float32 if np.asarray(x).dtype == np.float32 else np.float64
    u = np.asarray(x, dt) / dt(scale)
    v = np.asarray(y, dt) / dt(scale)
    if u.ndim == 2 and u.size > 64 and u.shape[0] < 32767 and u.shape[1] < 32767:
        iu0, iv0 = int(np.floor(u.min())) - 2, int(np.floor(v.min())) - 2
        iu1, iv1 = int(np.ceil(u.max())) + 3, int(np.ceil(v.max())) + 3
        lat = _hash01(np.arange(iu0, iu1)[None, :], np.arange(iv0, iv1)[:, None], seed) * 2 - 1
        return cv2.remap(lat, (u - iu0).astype(np.float32), (v - iv0).astype(np.float32), cv2.INTER_CUBIC,
                         borderMode=cv2.BORDER_REFLECT)
    iu = np.floor(u)
    iv = np.floor(v)
    fu = (u - iu).astype(np.float32)
    fv = (v - iv).astype(np.float32)
    iu = iu.astype(np.int64)
    iv = iv.astype(np.int64)
    a = _hash01(iu, iv, seed)
    b = _hash01(iu + 1, iv, seed)
    c = _hash01(iu, iv + 1, seed)
    d = _hash01(iu + 1, iv + 1, seed)
    top = a + (b - a) * fu
    bot = c + (d - c) * fu
    return (top + (bot - top) * fv) * 2 - 1


def fractal_noise(x: np.ndarray, y: np.ndarray, scale: float, seed: int, octaves: int = 3) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers, each half the scale and amplitude of the last."""
    out = np.zeros(np.broadcast(x, y).shape, np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * value_noise(x, y, scale / (2 ** o), seed + 7919 * o)
        total += amp
        amp *= 0.5
    return out / total


def pixel_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Independent standard-uniform value per integer pixel, in [-1, 1]."""
    return _hash01(np.asarray(x, np.int64), np.asarray(y, np.int64), seed) * 2 - 1
