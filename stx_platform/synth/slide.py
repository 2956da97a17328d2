"""One synthetic Xenium slide: layout, cells, geometry, expression and the H&E renderer.

Coordinates: the section lives in microns (the "slide frame"); the H&E image maps it at
``mpp`` um/px with origin at the top-left. The Xenium instrument frame is the slide frame
under a small rigid transform (rotation + shift), as a real H&E scanned after the run is
registered to the morphology image; DAPI nuclei differ from H&E nuclei by a small
registration error and a slightly larger, smoother outline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely

from stx_platform.synth.cells import CellTable, place_cells
from stx_platform.synth.expression import simulate_counts
from stx_platform.synth.layout import Layout, build_layout
from stx_platform.synth.organs import OrganRecipe, recipe
from stx_platform.synth.render import CellGeometry, SlideRenderer, Stain, slide_stain

#: H&E pixel sizes of HEST's human Xenium samples (um/px): the synthetic slides use them too.
HEST_XENIUM_MPP = (0.2125, 0.2737)
XENIUM_MORPHOLOGY_MPP = 0.2125
_CELLS_PER_MM2 = 3500.0  # rough mean density used to size a section for a target cell count


@dataclass
class SyntheticSlide:
    sample_id: str
    recipe: OrganRecipe
    seed: int
    mpp: float
    width_px: int
    height_px: int
    layout: Layout
    cells: CellTable
    counts: np.ndarray                 # (cells, panel genes) true counts before spill-over
    nuc_he_px: np.ndarray              # (n, 32, 2) nuclei as rendered in the H&E
    nuc_dapi_px: np.ndarray            # (n, 16, 2) DAPI-derived nuclei registered to the H&E
    cell_polys_px: list[np.ndarray]    # cell boundaries (nucleus expansion within Voronoi)
    stain: Stain
    xenium_rotation: float             # radians, slide frame -> Xenium frame
    xenium_shift_um: np.ndarray        # (2,)
    has_tumour: bool
    extra: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    def renderer(self) -> SlideRenderer:
        geom = CellGeometry(self.nuc_he_px.astype(np.float32), self.cell_polys_px)
        return SlideRenderer(self.layout, self.cells, geom, self.mpp, self.stain, self.seed)

    def to_xenium_um(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.xenium_rotation), np.sin(self.xenium_rotation)
        return (c * x_um - s * y_um + self.xenium_shift_um[0], s * x_um + c * y_um + self.xenium_shift_um[1])

    def he_to_morphology_matrix(self) -> np.ndarray:
        """3x3 affine mapping H&E pixels to Xenium morphology pixels (10x's alignment-file convention)."""
        c, s = np.cos(self.xenium_rotation), np.sin(self.xenium_rotation)
        k = self.mpp / XENIUM_MORPHOLOGY_MPP
        t = self.xenium_shift_um / XENIUM_MORPHOLOGY_MPP
        return np.array([[c * k, -s * k, t[0]], [s * k, c * k, t[1]], [0.0, 0.0, 1.0]])


def _cell_boundaries(nuc_px: np.ndarray, centres_px: np.ndarray, expand_px: np.ndarray) -> list[np.ndarray]:
    """Nucleus expansion clipped to the Voronoi cell of its centre, as Xenium segments cells."""
    n = len(nuc_px)
    closed = np.concatenate([nuc_px, nuc_px[:, :1]], 1)
    nuc = shapely.polygons(shapely.linearrings(closed.reshape(-1, 2), indices=np.repeat(np.arange(n), closed.shape[1])))
    grown = shapely.buffer(nuc, expand_px, quad_segs=3)
    vor = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(centres_px), ordered=True))
    cells = shapely.intersection(grown, vor)
    cells = shapely.make_valid(cells)
    out = []
    for gm in cells:
        if gm.geom_type == "MultiPolygon" or gm.geom_type == "GeometryCollection":
            polys = [p for p in getattr(gm, "geoms", []) if p.geom_type == "Polygon"]
            gm = max(polys, key=lambda p: p.area) if polys else None
        if gm is None or gm.is_empty or gm.geom_type != "Polygon":
            out.append(np.zeros((0, 2), np.float32))
        else:
            out.append(np.asarray(gm.exterior.coords, np.float32)[:-1])
    return out


def build_slide(sample_id: str, organ: str, seed: int, n_cells: int = 4000, mpp: float | None = None,
                tumour: bool | None = None, stain_style: str = "hest") -> SyntheticSlide:
    """Generate one slide deterministically from (organ, seed, n_cells)."""
    r = recipe(organ)
    rng = np.random.default_rng([seed, 17])
    if mpp is None:
        mpp = float(rng.choice(HEST_XENIUM_MPP, p=[0.6, 0.4]))
    if tumour is None:
        tumour = bool(rng.uniform() < 0.85)
    area_mm2 = n_cells / _CELLS_PER_MM2 * (1.45 if r.key in ("lung",) else 1.0)
    area_mm2 *= {"liver": 1.6, "ovary": 0.6, "lymph_node": 0.35, "skin": 1.1, "breast": 1.25}.get(r.key, 1.0)
    height_um = float(np.sqrt(area_mm2 / 1.3) * 1000)
    width_um = height_um * 1.3
    lay = build_layout(r, width_um, height_um, rng, tumour=tumour)
    cells = place_cells(lay, r, n_cells, rng)
    counts = simulate_counts(cells.type_name, cells.partner, cells.low_quality, cells.catalogue, r.key, rng,
                             depth=float(rng.uniform(0.8, 1.25)))
    nuc_um = cells.shapes.polygons(32)
    nuc_he_px = nuc_um / mpp
    reg = rng.normal(0, 0.35, 2)  # um, global registration error
    dapi_um = cells.shapes.polygons(16, scale=1.06) + reg + rng.normal(0, 0.12, (len(cells), 1, 2))
    nuc_dapi_px = dapi_um / mpp
    radius = np.array([cells.catalogue[t].cell_radius_um for t in cells.type_name])
    expand = np.clip(radius - 0.5 * (cells.shapes.a + cells.shapes.b), 0.8, 25.0) / mpp
    cell_polys = _cell_boundaries(nuc_dapi_px, cells.xy / mpp, expand)
    w_um, h_um = lay.size_um
    return SyntheticSlide(
        sample_id=sample_id, recipe=r, seed=seed, mpp=mpp,
        width_px=int(np.ceil(w_um / mpp)), height_px=int(np.ceil(h_um / mpp)),
        layout=lay, cells=cells, counts=counts, nuc_he_px=nuc_he_px, nuc_dapi_px=nuc_dapi_px,
        cell_polys_px=cell_polys, stain=slide_stain(rng, stain_style),
        xenium_rotation=float(rng.normal(0, 0.03)), xenium_shift_um=rng.uniform(50, 400, 2),
        has_tumour=lay.has_tumour)
