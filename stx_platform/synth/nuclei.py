"""Nucleus shapes by cell type, as they look in H&E.

A nucleus is a star-shaped curve in its own frame: an ellipse (semi-axes ``a`` >= ``b``, um)
whose radius is modulated by a few harmonics (pleomorphism), then bent (spindle cells are
often wavy), rotated and placed. Appearance parameters (chromatin darkness, coarseness,
nucleoli, vesicular centre) travel with the shape for the renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_VERTICES = 32
N_HARMONICS = 4  # harmonics 2..5


@dataclass(frozen=True)
class Morphology:
    major_um: tuple[float, float]     # semi-major axis: mean, sd
    aspect: tuple[float, float]       # b / a range
    irregularity: float               # harmonic amplitude
    darkness: tuple[float, float]     # haematoxylin load: mean, sd
    coarseness: float                 # chromatin texture contrast
    nucleoli: tuple[int, int]         # min, max count
    vesicular: float = 0.0            # pale centre, dark rim (0..1)
    bend: float = 0.0                 # banana / wavy bend
    lobes: float = 0.0                # 3-lobed (neutrophil)


MORPHOLOGY: dict[str, Morphology] = {
    "lymphocyte": Morphology((2.75, 0.22), (0.85, 1.0), 0.03, (1.35, 0.08), 0.12, (0, 0)),
    "plasma": Morphology((3.1, 0.25), (0.8, 0.95), 0.03, (1.1, 0.08), 0.45, (0, 0)),
    "macrophage": Morphology((4.3, 0.5), (0.55, 0.8), 0.09, (0.7, 0.08), 0.2, (0, 1), 0.2),
    "mast": Morphology((3.4, 0.3), (0.8, 0.95), 0.04, (1.0, 0.08), 0.2, (0, 0)),
    "dendritic": Morphology((4.4, 0.5), (0.55, 0.8), 0.14, (0.7, 0.08), 0.2, (0, 1), 0.2),
    "neutrophil": Morphology((3.6, 0.3), (0.85, 1.0), 0.04, (1.25, 0.1), 0.15, (0, 0), 0.0, 0.0, 0.32),
    "fibroblast": Morphology((7.0, 1.2), (0.16, 0.26), 0.03, (0.95, 0.1), 0.2, (0, 0), 0.0, 0.12),
    "endothelial": Morphology((6.0, 0.8), (0.2, 0.3), 0.03, (0.9, 0.08), 0.2, (0, 0), 0.0, 0.08),
    "smooth_muscle": Morphology((7.0, 1.0), (0.22, 0.32), 0.02, (0.8, 0.08), 0.15, (0, 1)),
    "adipocyte": Morphology((4.5, 0.5), (0.2, 0.35), 0.03, (0.9, 0.08), 0.15, (0, 0), 0.0, 0.1),
    "epithelial": Morphology((4.5, 0.4), (0.65, 0.85), 0.03, (0.75, 0.08), 0.25, (0, 1), 0.25),
    "epithelial_columnar": Morphology((5.3, 0.5), (0.45, 0.62), 0.03, (0.85, 0.08), 0.25, (0, 1), 0.15),
    "basal": Morphology((4.6, 0.4), (0.38, 0.55), 0.03, (0.95, 0.08), 0.2, (0, 0)),
    "flat": Morphology((5.0, 0.5), (0.28, 0.4), 0.03, (0.9, 0.08), 0.2, (0, 0), 0.0, 0.06),
    "hepatocyte": Morphology((4.4, 0.35), (0.85, 1.0), 0.03, (0.62, 0.06), 0.22, (1, 1), 0.45),
    "keratinocyte": Morphology((4.6, 0.4), (0.7, 0.9), 0.04, (0.6, 0.06), 0.2, (1, 1), 0.45),
    "tumour": Morphology((7.2, 1.5), (0.6, 0.95), 0.13, (1.25, 0.18), 0.5, (1, 3), 0.35),
    "dead": Morphology((2.4, 0.4), (0.7, 1.0), 0.25, (1.7, 0.1), 0.05, (0, 0)),
}


@dataclass
class NucleusShapes:
    """Shape and appearance parameters for n nuclei (lengths in um)."""

    center: np.ndarray       # (n, 2) x, y
    a: np.ndarray            # (n,) semi-major
    b: np.ndarray            # (n,) semi-minor
    angle: np.ndarray        # (n,) radians, major axis direction
    harm: np.ndarray         # (n, N_HARMONICS, 2) cos/sin amplitudes of harmonics 2..5
    bend: np.ndarray         # (n,)
    darkness: np.ndarray     # (n,)
    coarseness: np.ndarray   # (n,)
    vesicular: np.ndarray    # (n,)
    nucleoli: np.ndarray     # (n, 3, 3): local x, y, radius (radius 0 = none)

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, idx) -> "NucleusShapes":
        return NucleusShapes(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    def radius(self, theta: np.ndarray, idx=None) -> np.ndarray:
        """Radius of the unbent local curve at local angle ``theta`` (broadcast against nuclei)."""
        sl = slice(None) if idx is None else idx
        a, b, harm = self.a[sl], self.b[sl], self.harm[sl]
        if theta.ndim == 2:  # (n, k)
            a, b = a[:, None], b[:, None]
            h = np.arange(2, 2 + N_HARMONICS)[None, :, None] * theta[:, None, :]  # n, H, k
            mod = (harm[..., 0:1] * np.cos(h) + harm[..., 1:2] * np.sin(h)).sum(1)
        else:  # (n,)
            h = np.arange(2, 2 + N_HARMONICS)[None, :] * theta[:, None]
            mod = (harm[..., 0] * np.cos(h) + harm[..., 1] * np.sin(h)).sum(1)
        ell = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
        return ell * np.clip(1 + mod, 0.55, 1.6)

    def to_world(self, lx: np.ndarray, ly: np.ndarray, idx=None) -> tuple[np.ndarray, np.ndarray]:
        """Local (unbent) coordinates -> world coordinates (um). Shapes broadcast as in ``radius``."""
        sl = slice(None) if idx is None else idx
        a, bend, ang, c = self.a[sl], self.bend[sl], self.angle[sl], self.center[sl]
        if lx.ndim == 2:
            a, bend, ang = a[:, None], bend[:, None], ang[:, None]
            cx, cy = c[:, 0:1], c[:, 1:2]
        else:
            cx, cy = c[:, 0], c[:, 1]
        ly = ly + bend * (lx * lx) / a
        ca, sa = np.cos(ang), np.sin(ang)
        return cx + lx * ca - ly * sa, cy + lx * sa + ly * ca

    def to_local(self, wx: np.ndarray, wy: np.ndarray, idx) -> tuple[np.ndarray, np.ndarray]:
        """World -> local (unbent) coordinates, one nucleus per point (``idx`` per point)."""
        dx = wx - self.center[idx, 0]
        dy = wy - self.center[idx, 1]
        ca, sa = np.cos(self.angle[idx]), np.sin(self.angle[idx])
        lx = dx * ca + dy * sa
        ly = -dx * sa + dy * ca
        ly = ly - self.bend[idx] * lx * lx / self.a[idx]
        return lx, ly

    def polygons(self, n_vertices: int = N_VERTICES, scale: float = 1.0) -> np.ndarray:
        """Vertices (n, n_vertices, 2) in um, counter-clockwise, not closed."""
        th = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)[None, :].repeat(len(self), 0)
        r = self.radius(th) * scale
        x, y = self.to_world(r * np.cos(th), r * np.sin(th))
        return np.stack([x, y], -1)

    def sample_inside(self, idx: np.ndarray, rng: np.random.Generator, frac: float = 0.95):
        """Uniform-ish points strictly inside nuclei ``idx`` (one point per entry)."""
        th = rng.uniform(0, 2 * np.pi, len(idx))
        dth = 2 * np.pi / N_VERTICES
        k = np.floor(th / dth)
        r0 = self.radius(k * dth, idx)
        r1 = self.radius((k + 1) * dth, idx)
        rmax = np.minimum(r0, r1) * np.cos(dth) * frac
        rho = np.sqrt(rng.uniform(0, 1, len(idx))) * rmax
        return self.to_world(rho * np.cos(th), rho * np.sin(th), idx)

    def area(self) -> np.ndarray:
        th = np.linspace(0, 2 * np.pi, 64, endpoint=False)[None, :].repeat(len(self), 0)
        r = self.radius(th)
        return 0.5 * (r ** 2).mean(1) * 2 * np.pi


def sample_shapes(morph_keys: np.ndarray, centers: np.ndarray, angles: np.ndarray,
                  rng: np.random.Generator, max_major: np.ndarray | None = None) -> NucleusShapes:
    """Draw nucleus shapes for each cell from its type's morphology.

    ``max_major`` caps the semi-major axis (e.g. half the distance to the nearest neighbour)
    so that neighbouring nuclei do not overlap.
    """
    n = len(morph_keys)
    a = np.empty(n)
    asp = np.empty(n)
    irr = np.empty(n)
    dark = np.empty(n)
    coarse = np.empty(n)
    ves = np.empty(n)
    bend = np.empty(n)
    lobes = np.empty(n)
    nnuc = np.zeros(n, int)
    for key in np.unique(morph_keys):
        m = MORPHOLOGY[str(key)]
        sel = np.flatnonzero(morph_keys == key)
        k = len(sel)
        a[sel] = np.clip(rng.normal(m.major_um[0], m.major_um[1], k), m.major_um[0] * 0.6, m.major_um[0] * 1.8)
        asp[sel] = rng.uniform(*m.aspect, k)
        irr[sel] = m.irregularity * rng.uniform(0.5, 1.5, k)
        dark[sel] = np.clip(rng.normal(m.darkness[0], m.darkness[1], k), 0.3, 2.0)
        coarse[sel] = m.coarseness * rng.uniform(0.7, 1.3, k)
        ves[sel] = m.vesicular * rng.uniform(0.5, 1.2, k)
        bend[sel] = m.bend * rng.uniform(-1, 1, k)
        lobes[sel] = m.lobes
        nnuc[sel] = rng.integers(m.nucleoli[0], m.nucleoli[1] + 1, k)
    if max_major is not None:
        a = np.minimum(a, np.maximum(max_major, 1.2))
    b = a * asp
    harm = rng.normal(0, 1, (n, N_HARMONICS, 2)) * (irr[:, None, None] / np.arange(1, N_HARMONICS + 1)[None, :, None])
    harm[:, 1, 0] += lobes  # harmonic 3: trilobed
    nuc = np.zeros((n, 3, 3))
    for j in range(3):
        has = nnuc > j
        r = rng.uniform(0, 0.45, n)
        t = rng.uniform(0, 2 * np.pi, n)
        nuc[:, j, 0] = np.where(has, r * a * np.cos(t), 0)
        nuc[:, j, 1] = np.where(has, r * b * np.sin(t), 0)
        nuc[:, j, 2] = np.where(has, np.clip(rng.normal(0.55, 0.15, n), 0.3, 0.9) * np.sqrt(a / 5.0), 0)
    return NucleusShapes(centers.astype(np.float64), a, b, angles.astype(np.float64), harm, bend, dark, coarse,
                         ves, nuc)
