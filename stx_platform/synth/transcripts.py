"""Decoded transcripts of a synthetic slide, as a Xenium run reports them.

Each count becomes a transcript placed inside its cell: about half over the nucleus, the rest
in the cytoplasm around it. Then the imperfections a reader must cope with: spill-over
(a share of each cell's molecules lands in a neighbour and is assigned there, as Xenium
assigns by position), molecules outside any cell (UNASSIGNED), low-quality decodings (qv < 20,
half of them mis-decoded to a random gene), and negative-control probes / codewords.
Generated in chunks of cells so a 200k-cell slide streams to Parquet in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from stx_platform.synth.panel import control_features, gene_panel
from stx_platform.synth.slide import XENIUM_MORPHOLOGY_MPP, SyntheticSlide

SPILL = 0.07
UNASSIGNED_FRAC = 0.04
LOW_QV_FRAC = 0.12
CONTROL_RATE = 0.006
NUCLEAR_FRAC = 0.55


@dataclass
class TranscriptChunk:
    """Columns of one chunk, in the slide frame (um); owner -1 = unassigned."""

    owner: np.ndarray          # int64 cell index or -1
    feature: np.ndarray        # int32 index into ``features`` (panel genes, then controls)
    x_um: np.ndarray
    y_um: np.ndarray
    z_um: np.ndarray
    qv: np.ndarray             # float32
    overlaps_nucleus: np.ndarray  # uint8
    nucleus_distance: np.ndarray  # float32, um

    def __len__(self) -> int:
        return len(self.owner)


def feature_names(style: str) -> tuple[str, ...]:
    return gene_panel() + control_features(style)


def _positions(slide: SyntheticSlide, cell: np.ndarray, nuclear: np.ndarray, reach: np.ndarray,
               rng: np.random.Generator):
    sh = slide.cells.shapes
    x = np.empty(len(cell))
    y = np.empty(len(cell))
    dist = np.zeros(len(cell), np.float32)
    ni = np.flatnonzero(nuclear)
    if len(ni):
        x[ni], y[ni] = sh.sample_inside(cell[ni], rng)
    ci = np.flatnonzero(~nuclear)
    if len(ci):
        c = cell[ci]
        th = rng.uniform(0, 2 * np.pi, len(ci))
        r_in = sh.radius(th, c) * 1.04
        r_out = np.maximum(r_in + 0.3, reach[c])
        rho = np.sqrt(rng.uniform(r_in ** 2, r_out ** 2))
        x[ci], y[ci] = sh.to_world(rho * np.cos(th), rho * np.sin(th), c)
        dist[ci] = (rho - r_in).astype(np.float32)
    return x, y, dist


def generate(slide: SyntheticSlide, rng: np.random.Generator, style: str = "modern",
             chunk: int = 20_000) -> Iterator[TranscriptChunk]:
    """Yield the slide's transcripts chunk by chunk."""
    cells = slide.cells
    n = len(cells)
    tree = cKDTree(cells.xy)
    k = min(7, n)
    dnn, nbr = tree.query(cells.xy, k=k)
    radius = np.array([cells.catalogue[t].cell_radius_um for t in cells.type_name])
    reach = np.minimum(radius, 0.5 * dnn[:, 1] if k > 1 else radius)
    reach = np.maximum(reach, (cells.shapes.a + cells.shapes.b) / 2 + 0.4)
    n_genes = len(gene_panel())
    n_ctrl = len(control_features(style))
    w_um, h_um = slide.layout.size_um
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        C = slide.counts[s:e]
        rr, cc = np.nonzero(C)
        reps = C[rr, cc]
        src = np.repeat(rr + s, reps).astype(np.int64)
        gene = np.repeat(cc, reps).astype(np.int32)
        m = len(src)
        owner = src.copy()
        # spill-over into a neighbour (assigned where it lands)
        spill = rng.uniform(0, 1, m) < SPILL
        if k > 1 and spill.any():
            j = rng.integers(1, k, spill.sum())
            owner[spill] = nbr[src[spill], j]
        nuclear = rng.uniform(0, 1, m) < NUCLEAR_FRAC
        x, y, dist = _positions(slide, owner, nuclear, reach, rng)
        ovl = nuclear.astype(np.uint8)
        # molecules outside any cell
        out = rng.uniform(0, 1, m) < UNASSIGNED_FRAC
        if out.any():
            th = rng.uniform(0, 2 * np.pi, out.sum())
            rad = rng.uniform(10, 25, out.sum())
            x[out] = cells.xy[src[out], 0] + rad * np.cos(th)
            y[out] = cells.xy[src[out], 1] + rad * np.sin(th)
            owner[out] = -1
            ovl[out] = 0
            dist[out] = rad.astype(np.float32)
        # decoding quality
        qv = rng.uniform(20, 40, m).astype(np.float32)
        low = rng.uniform(0, 1, m) < LOW_QV_FRAC
        qv[low] = rng.uniform(2, 19.9, low.sum())
        wrong = low & (rng.uniform(0, 1, m) < 0.5)
        gene[wrong] = rng.integers(0, n_genes, wrong.sum())
        # controls: scattered, some over cells, some not
        nc = rng.binomial(m, CONTROL_RATE)
        c_owner = rng.integers(s, e, nc)
        c_owner[rng.uniform(0, 1, nc) < 0.4] = -1
        c_x = rng.uniform(0, w_um, nc)
        c_y = rng.uniform(0, h_um, nc)
        has = c_owner >= 0
        if has.any():
            c_x[has], c_y[has], _ = _positions(slide, c_owner[has], np.ones(has.sum(), bool), reach, rng)
        owner = np.concatenate([owner, c_owner])
        feat = np.concatenate([gene, n_genes + rng.integers(0, n_ctrl, nc).astype(np.int32)])
        x = np.concatenate([x, c_x])
        y = np.concatenate([y, c_y])
        ovl = np.concatenate([ovl, has.astype(np.uint8)])
        dist = np.concatenate([dist, np.zeros(nc, np.float32)])
        qv = np.concatenate([qv, rng.uniform(0, 40, nc).astype(np.float32)])
        perm = rng.permutation(len(owner))
        yield TranscriptChunk(owner[perm], feat[perm], x[perm], y[perm],
                              rng.uniform(8, 20, len(owner))[perm].astype(np.float32), qv[perm], ovl[perm], dist[perm])


def morphology_px(slide: SyntheticSlide, x_um: np.ndarray, y_um: np.ndarray):
    """Xenium (um) and DAPI (px) coordinates of slide-frame points."""
    xx, yy = slide.to_xenium_um(x_um, y_um)
    return xx, yy, xx / XENIUM_MORPHOLOGY_MPP, yy / XENIUM_MORPHOLOGY_MPP
