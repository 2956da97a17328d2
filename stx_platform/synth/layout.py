"""Tissue architecture: a compartment map of the section on a coarse grid (um units).

The map says, for every 2 um x 2 um square of the section, what is there: glass, stroma, a
gland's epithelium / basal layer / lumen, tumour, vessel wall / lumen, lymphoid aggregate,
fat, muscle, keratin. A second map (``kind``) says which structure family or sub-zone the
square belongs to, so cells can be drawn from the right mixture. Structures are painted in
order: stroma, fat, muscle, epidermis, glands, tumour, vessels, lymphoid aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from stx_platform.synth.noise import smooth_noise
from stx_platform.synth.organs import GlandSpec, OrganRecipe

GLASS, STROMA, LUMEN, EPITHELIUM, BASAL, TUMOUR, VESSEL_LUMEN, VESSEL_WALL, IMMUNE, ADIPOSE, MUSCLE, KERATIN, \
    NECROSIS = range(13)
COMPARTMENTS = ("glass", "stroma", "lumen", "epithelium", "basal", "tumour", "vessel_lumen", "vessel_wall",
                "immune", "adipose", "muscle", "keratin", "necrosis")

# kind codes for compartments that are not gland families
KIND_ALVEOLAR = 100   # lung septa
KIND_PLATES = 101     # liver cords
KIND_EPIDERMIS = 102  # skin epidermis
KIND_INSITU = 1       # tumour filling a duct (DCIS)
KIND_FOLLICLE = 1     # B-cell follicle inside a lymphoid aggregate
KIND_MEDIA = 1        # vessel media (perivascular smooth muscle)
LUMEN_STYLES = {"empty": 0, "secretion": 1, "colloid": 2, "mucin": 3, "air": 4, "bowman": 0}


@dataclass
class Layout:
    grid_um: float
    comp: np.ndarray      # uint8 (H, W) compartment codes
    kind: np.ndarray      # int16 (H, W) structure family / zone / lumen style
    flow: np.ndarray      # float32 (H, W) preferred fibre direction, radians
    tumour_dist: np.ndarray  # float32 (H, W) distance to tumour in um (inf-like when none)
    organ: str
    has_tumour: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.comp.shape

    @property
    def size_um(self) -> tuple[float, float]:
        return self.comp.shape[1] * self.grid_um, self.comp.shape[0] * self.grid_um

    def smooth_flow(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Fibre direction interpolated bilinearly (on the doubled angle) at 2-D arrays of points."""
        if not hasattr(self, "_flow2"):
            self._flow2 = (np.cos(2 * self.flow).astype(np.float32), np.sin(2 * self.flow).astype(np.float32))
        mx = (np.asarray(x_um, np.float32) / self.grid_um - 0.5).astype(np.float32)
        my = (np.asarray(y_um, np.float32) / self.grid_um - 0.5).astype(np.float32)
        c = cv2.remap(self._flow2[0], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        s = cv2.remap(self._flow2[1], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return 0.5 * np.arctan2(s, c)

    def smooth_lookup(self, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Compartment and kind at 2-D arrays of points, with borders interpolated between grid
        squares (piecewise-linear instead of 2 um staircases)."""
        g = self.grid_um
        x0, y0 = int(max(np.floor(x_um.min() / g) - 2, 0)), int(max(np.floor(y_um.min() / g) - 2, 0))
        x1 = int(min(np.ceil(x_um.max() / g) + 3, self.comp.shape[1]))
        y1 = int(min(np.ceil(y_um.max() / g) + 3, self.comp.shape[0]))
        comp_w = self.comp[y0:y1, x0:x1]
        kind_w = self.kind[y0:y1, x0:x1]
        mx = (np.asarray(x_um, np.float32) / g - 0.5 - x0).astype(np.float32)
        my = (np.asarray(y_um, np.float32) / g - 0.5 - y0).astype(np.float32)
        keys = comp_w.astype(np.int32) * 4096 + (kind_w.astype(np.int32) + 1024)
        uniq = np.unique(keys)
        best = np.full(mx.shape, -1.0, np.float32)
        out = np.zeros(mx.shape, np.int32)
        for k in uniq:
            ind = cv2.remap((keys == k).astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            better = ind > best
            best[better] = ind[better]
            out[better] = k
        return (out // 4096).astype(np.uint8), (out % 4096 - 1024).astype(np.int16)

    def lookup(self, x_um: np.ndarray, y_um: np.ndarray, field: str = "comp") -> np.ndarray:
        arr = getattr(self, field)
        ix = np.clip((np.asarray(x_um) / self.grid_um).astype(int), 0, arr.shape[1] - 1)
        iy = np.clip((np.asarray(y_um) / self.grid_um).astype(int), 0, arr.shape[0] - 1)
        return arr[iy, ix]


def _poisson_centres(mask: np.ndarray, n: int, min_dist: float, rng: np.random.Generator,
                     tries: int = 30) -> np.ndarray:
    """Up to ``n`` points on ``mask`` pixels at least ``min_dist`` apart (dart throwing)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0 or n <= 0:
        return np.zeros((0, 2))
    cand = rng.integers(0, len(xs), n * tries)
    pts = np.stack([xs[cand], ys[cand]], 1).astype(float) + rng.uniform(0, 1, (len(cand), 2))
    keep: list[np.ndarray] = []
    cell = max(min_dist, 1.0)
    grid: dict[tuple[int, int], list[int]] = {}
    for p in pts:
        gx, gy = int(p[0] // cell), int(p[1] // cell)
        ok = True
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in grid.get((gx + dx, gy + dy), ()):
                    if (keep[j][0] - p[0]) ** 2 + (keep[j][1] - p[1]) ** 2 < min_dist * min_dist:
                        ok = False
                        break
                if not ok:
                    break
            if not ok:
                break
        if ok:
            grid.setdefault((gx, gy), []).append(len(keep))
            keep.append(p)
            if len(keep) >= n:
                break
    return np.array(keep).reshape(-1, 2)


def _star_polygon(cx, cy, a, b, angle, rng, folds=0.0, wobble=0.06, n=48):
    """Vertices of a wobbly ellipse (optionally with papillary folds), grid units."""
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = a * b / np.sqrt((b * np.cos(th)) ** 2 + (a * np.sin(th)) ** 2)
    mod = 1 + wobble * sum(rng.normal(0, 1 / k) * np.cos(k * th + rng.uniform(0, 6.3)) for k in (2, 3, 4))
    if folds > 0:
        k = rng.integers(5, 9)
        mod = mod * (1 - folds * 0.22 * (0.5 + 0.5 * np.cos(k * th + rng.uniform(0, 6.3))) ** 3)
    r = r * mod
    x = cx + r * np.cos(th) * np.cos(angle) - r * np.sin(th) * np.sin(angle)
    y = cy + r * np.cos(th) * np.sin(angle) + r * np.sin(th) * np.cos(angle)
    return np.stack([x, y], 1)


def _fill(arr: np.ndarray, poly: np.ndarray, value: int) -> None:
    cv2.fillPoly(arr, [np.round(poly * 16).astype(np.int32)], int(value), lineType=cv2.LINE_8, shift=4)


def _poly_mask(shape: tuple[int, int], poly: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
    """A polygon rasterised within its bounding box: (window slices, bool mask of the window).

    Painting through windows keeps each structure's cost proportional to its own size, not to
    the section's (a 200k-cell section has ~10^8 grid squares and thousands of structures).
    """
    H, W = shape
    x0, x1 = max(int(np.floor(poly[:, 0].min())) - 1, 0), min(int(np.ceil(poly[:, 0].max())) + 2, W)
    y0, y1 = max(int(np.floor(poly[:, 1].min())) - 1, 0), min(int(np.ceil(poly[:, 1].max())) + 2, H)
    if x1 <= x0 or y1 <= y0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    tmp = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _fill(tmp, poly - np.array([x0, y0], float), 1)
    return (slice(y0, y1), slice(x0, x1)), tmp.astype(bool)


def _paint(arrays_values, poly: np.ndarray, where=None) -> tuple[tuple[slice, slice], np.ndarray]:
    """Set ``arr[inside poly (& where)] = value`` for each (arr, value); returns the window and
    the painted mask so later rings can be restricted to it."""
    arr0 = arrays_values[0][0]
    win, m = _poly_mask(arr0.shape, poly)
    if where is not None:
        m &= where(win)
    for arr, value in arrays_values:
        arr[win][m] = value
    return win, m


def _within(mask: np.ndarray, win: tuple[slice, slice], sub: tuple[slice, slice]) -> np.ndarray:
    """``mask`` (defined on window ``win``) cut to window ``sub``; False where ``sub`` leaves ``win``."""
    out = np.zeros((sub[0].stop - sub[0].start, sub[1].stop - sub[1].start), bool)
    y0, y1 = max(sub[0].start, win[0].start), min(sub[0].stop, win[0].stop)
    x0, x1 = max(sub[1].start, win[1].start), min(sub[1].stop, win[1].stop)
    if y1 > y0 and x1 > x0:
        out[y0 - sub[0].start:y1 - sub[0].start, x0 - sub[1].start:x1 - sub[1].start] = \
            mask[y0 - win[0].start:y1 - win[0].start, x0 - win[1].start:x1 - win[1].start]
    return out


def _paint_gland(comp, kind, spec: GlandSpec, fam: int, cx, cy, r_um, rng, g, ring_um=None):
    """Paint one gland: basal ring, epithelium, lumen. Returns nothing; grid-unit geometry."""
    elong = rng.uniform(*spec.elongation)
    a = r_um / g * np.sqrt(elong)
    b = r_um / g / np.sqrt(elong)
    ang = rng.uniform(0, np.pi)
    outer = _star_polygon(cx, cy, a, b, ang, rng, spec.folds)
    if spec.solid:
        _paint([(comp, EPITHELIUM), (kind, fam)], outer)
        return
    if spec.basal:
        _paint([(comp, BASAL), (kind, fam)], outer)
        inner = cx + (outer[:, 0] - cx) * (1 - 5.0 / r_um), cy + (outer[:, 1] - cy) * (1 - 5.0 / r_um)
        _paint([(comp, EPITHELIUM)], np.stack(inner, 1))
    else:
        _paint([(comp, EPITHELIUM), (kind, fam)], outer)
    lf = rng.uniform(*spec.lumen_frac)
    if ring_um is not None:
        lf = max(0.0, 1 - ring_um / r_um)
    if lf > 0.02:
        lumen = np.stack([cx + (outer[:, 0] - cx) * lf, cy + (outer[:, 1] - cy) * lf], 1)
        _paint([(comp, LUMEN), (kind, LUMEN_STYLES[spec.lumen])], lumen)


def build_layout(recipe: OrganRecipe, width_um: float, height_um: float, rng: np.random.Generator,
                 tumour: bool = True, grid_um: float = 2.0, tissue_margin: bool = True) -> Layout:
    g = grid_um
    H, W = int(np.ceil(height_um / g)), int(np.ceil(width_um / g))
    comp = np.full((H, W), STROMA, np.uint8)
    kind = np.zeros((H, W), np.int16)

    # Section outline: an irregular blob with torn edges, glass around it.
    if tissue_margin:
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        edge = np.minimum.reduce([xx, yy, W - 1 - xx, H - 1 - yy]) / (0.08 * min(H, W))
        field = np.clip(edge, 0, 1.5) + 0.35 * smooth_noise((H, W), 250 / g, rng) + 0.08 * smooth_noise((H, W), 40 / g, rng)
        tissue = field > 0.62
        tissue = ndimage.binary_fill_holes(tissue)
        lab, nlab = ndimage.label(tissue)
        if nlab > 1:
            sizes = ndimage.sum(tissue, lab, range(1, nlab + 1))
            tissue = lab == (1 + int(np.argmax(sizes)))
        # a few tears / holes inside the section
        holes = (smooth_noise((H, W), 60 / g, rng) > 2.6)
        tissue &= ~holes
    else:
        tissue = np.ones((H, W), bool)
    area_px = tissue.sum()

    # Fat.
    if recipe.adipose_area > 0:
        fat_field = smooth_noise((H, W), 350 / g, rng)
        thr = np.quantile(fat_field[tissue], 1 - recipe.adipose_area)
        comp[(fat_field > thr) & tissue] = ADIPOSE

    # Muscle band along the bottom edge (muscularis / myometrium / prostate stroma bundles).
    if recipe.muscle_band:
        xs = np.arange(W)
        top = H * rng.uniform(0.72, 0.82) + (H * 0.03) * np.sin(xs / W * rng.uniform(2, 5) + rng.uniform(0, 6))
        yy = np.arange(H)[:, None]
        comp[(yy > top[None, :]) & tissue] = MUSCLE

    # Epidermis along the top edge: keratin, keratinocytes, basal layer; rete ridges below.
    if recipe.epidermis:
        xs = np.arange(W)
        surf = np.argmax(tissue, axis=0).astype(float)
        surf[~tissue.any(0)] = H
        thick = (70 + 25 * np.sin(xs * g / rng.uniform(60, 110) + rng.uniform(0, 6)) ** 2) / g
        yy = np.arange(H)[:, None]
        ker = (yy >= surf[None, :]) & (yy < surf[None, :] + 14 / g)
        epi = (yy >= surf[None, :] + 14 / g) & (yy < surf[None, :] + thick[None, :])
        bas = (yy >= surf[None, :] + thick[None, :]) & (yy < surf[None, :] + thick[None, :] + 7 / g)
        comp[ker & tissue] = KERATIN
        comp[epi & tissue] = EPITHELIUM
        kind[epi & tissue] = KIND_EPIDERMIS
        comp[bas & tissue] = BASAL
        kind[bas & tissue] = KIND_EPIDERMIS

    free = tissue & (comp == STROMA)

    # Parenchyma of plates (liver) or alveoli (lung).
    if recipe.plates:
        comp[free] = EPITHELIUM
        kind[free] = KIND_PLATES
        sinus = np.abs(smooth_noise((H, W), 14 / g, rng)) < 0.11
        comp[free & sinus] = VESSEL_WALL
        # portal tracts: stroma islands with a bile duct
        n_portal = max(1, int(area_px * g * g / 0.35e6))
        for cx, cy in _poisson_centres(free, n_portal, 300 / g, rng):
            r = rng.uniform(50, 90) / g
            cv2.circle(comp, (int(cx), int(cy)), int(r), STROMA, -1)
            cv2.circle(kind, (int(cx), int(cy)), int(r), 0, -1)
    if recipe.alveoli:
        spacing = rng.uniform(95, 130) / g
        n_alv = int(free.sum() / (spacing ** 2) * 1.2)
        cen = _poisson_centres(free, n_alv, spacing * 0.8, rng)
        sept = free.copy()
        comp[free] = EPITHELIUM
        kind[free] = KIND_ALVEOLAR
        for cx, cy in cen:
            a = spacing * rng.uniform(0.38, 0.5)
            poly = _star_polygon(cx, cy, a, a * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi), rng, wobble=0.12)
            _paint([(comp, LUMEN), (kind, LUMEN_STYLES["air"])], poly, where=lambda w: sept[w])

    # Glands / tubules / acini / follicles.
    free = tissue & (comp == STROMA)
    families = list(recipe.glands)
    weights = np.array([f.weight for f in families], float)
    mean_area = sum(w * np.pi * np.mean(f.radius_um) ** 2 for f, w in zip(families, weights / weights.sum()))
    n_glands = int(recipe.gland_area * free.sum() * g * g / max(mean_area, 1.0))
    if n_glands > 0:
        min_d = min(f.radius_um[0] for f in families) * 2.1 / g
        cents = _poisson_centres(free, n_glands, min_d, rng)
        fams = rng.choice(len(families), len(cents), p=weights / weights.sum())
        for (cx, cy), fi in zip(cents, fams):
            spec = families[fi]
            if spec.clustered:
                # a lobule: a few acini packed around a centre
                n_ac = rng.integers(4, 10)
                for _ in range(n_ac):
                    r = rng.uniform(*spec.radius_um)
                    ox, oy = rng.normal(0, 2.0 * r / g, 2)
                    if free[int(np.clip(cy + oy, 0, H - 1)), int(np.clip(cx + ox, 0, W - 1))]:
                        _paint_gland(comp, kind, spec, fi, cx + ox, cy + oy, r, rng, g)
            else:
                _paint_gland(comp, kind, spec, fi, cx, cy, rng.uniform(*spec.radius_um), rng, g)
        comp[~tissue] = GLASS

    # Tumour.
    has_tumour = bool(tumour)
    if has_tumour:
        frac = rng.uniform(*recipe.tumour_area)
        region_field = smooth_noise((H, W), 300 / g, rng) + 0.3 * smooth_noise((H, W), 90 / g, rng)
        thr = np.quantile(region_field[tissue], 1 - frac)
        region = (region_field > thr) & tissue & (comp != KERATIN)
        if recipe.epidermis:
            region &= comp != EPITHELIUM  # SCC invades below the epidermis
        pattern = recipe.tumour_pattern
        nests_field = smooth_noise((H, W), 45 / g, rng)
        if pattern == "in_situ":
            # ducts inside the region are filled by tumour (basal layer kept), plus invasive nests
            lab, _ = ndimage.label(np.isin(comp, (EPITHELIUM, LUMEN)))
            hit = np.unique(lab[region & (lab > 0)])
            insitu = np.isin(lab, hit[hit > 0])
            comp[insitu] = TUMOUR
            kind[insitu] = KIND_INSITU
            inv = region & (nests_field > 0.35) & np.isin(comp, (STROMA, ADIPOSE))
            comp[inv] = TUMOUR
            kind[inv] = 0
        elif pattern == "nests":
            nests = region & (nests_field > -0.1) & ~np.isin(comp, (GLASS,))
            comp[nests] = TUMOUR
            kind[nests] = 0
        elif pattern == "sheets":
            sheet = region.copy()
            comp[sheet] = TUMOUR
            kind[sheet] = 0
            vessels = np.abs(smooth_noise((H, W), 30 / g, rng)) < 0.07
            comp[sheet & vessels] = VESSEL_WALL
        elif pattern == "glands":
            comp[region] = STROMA
            kind[region] = 0
            n_tg = int(region.sum() * g * g / (np.pi * 38 ** 2) * 0.9)
            for cx, cy in _poisson_centres(region, n_tg, 40 / g, rng):
                r = rng.uniform(22, 55) / g
                poly = _star_polygon(cx, cy, r * rng.uniform(1, 1.6), r, rng.uniform(0, np.pi), rng, wobble=0.22)
                _paint([(comp, TUMOUR), (kind, 0)], poly)
                if rng.uniform() < 0.75:
                    lf = rng.uniform(0.2, 0.55)
                    lum = np.stack([cx + (poly[:, 0] - cx) * lf, cy + (poly[:, 1] - cy) * lf], 1)
                    fill = NECROSIS if rng.uniform() < 0.3 else LUMEN
                    _paint([(comp, fill), (kind, LUMEN_STYLES["secretion"])], lum)
        comp[~tissue] = GLASS
        has_tumour = bool((comp == TUMOUR).any())

    # Vessels in stroma (and between tumour nests).
    stroma = comp == STROMA
    n_v = int(recipe.vessel_per_mm2 * tissue.sum() * g * g / 1e6)
    for cx, cy in _poisson_centres(stroma, n_v, 25 / g, rng):
        rl = float(np.clip(rng.lognormal(np.log(5.0), 0.6), 2.0, 40.0))
        el = rng.uniform(1.0, 2.5)
        ang = rng.uniform(0, np.pi)
        wall = 3.0 + (6.0 if rl > 12 else 0.0)
        outer = _star_polygon(cx, cy, (rl + wall) / g * el, (rl + wall) / g, ang, rng, wobble=0.05)
        inner = _star_polygon(cx, cy, rl / g * el, rl / g, ang, rng, wobble=0.03)
        win, m = _poly_mask(comp.shape, outer)
        m &= np.isin(comp[win], (STROMA, TUMOUR, ADIPOSE))
        cw, kw = comp[win], kind[win]
        if rl > 12:
            cw[m] = MUSCLE
            kw[m] = KIND_MEDIA
            mid = _star_polygon(cx, cy, (rl + 3.0) / g * el, (rl + 3.0) / g, ang, rng, wobble=0.03)
            _paint([(comp, VESSEL_WALL)], mid, where=lambda w, win=win, m=m: _within(m, win, w))
        else:
            cw[m] = VESSEL_WALL
        _paint([(comp, VESSEL_LUMEN)], inner, where=lambda w, win=win, m=m: _within(m, win, w))

    # Lymphoid aggregates in stroma, B-cell follicle in the middle.
    stroma = comp == STROMA
    n_agg = int(recipe.aggregates_per_mm2 * tissue.sum() * g * g / 1e6 * rng.uniform(0.5, 1.5))
    for cx, cy in _poisson_centres(stroma, n_agg, 200 / g, rng):
        r = rng.uniform(40, 120) / g
        poly = _star_polygon(cx, cy, r * rng.uniform(1, 1.4), r, rng.uniform(0, np.pi), rng, wobble=0.15)
        win, m = _paint([(comp, IMMUNE), (kind, 0)], poly, where=lambda w: np.isin(comp[w], (STROMA, ADIPOSE)))
        if r * g > 60:
            inner = np.stack([cx + (poly[:, 0] - cx) * 0.55, cy + (poly[:, 1] - cy) * 0.55], 1)
            _paint([(kind, KIND_FOLLICLE)], inner, where=lambda w, win=win, m=m: _within(m, win, w))

    comp[~tissue] = GLASS

    # Preferred fibre direction: smooth random field, bent to run along structure borders.
    base = smooth_noise((H, W), 220 / g, rng) * 1.2
    struct = ~np.isin(comp, (STROMA, ADIPOSE, GLASS))
    if struct.any() and (~struct).any():
        dist, (iy, ix) = ndimage.distance_transform_edt(~struct, return_indices=True)
        yy, xx = np.mgrid[0:H, 0:W]
        normal = np.arctan2(iy - yy, ix - xx)
        tangential = normal + np.pi / 2
        w = np.exp(-dist * g / 40.0)
        # blend angles on the doubled-angle circle (fibres have no head or tail)
        c = (1 - w) * np.cos(2 * base) + w * np.cos(2 * tangential)
        s = (1 - w) * np.sin(2 * base) + w * np.sin(2 * tangential)
        flow = 0.5 * np.arctan2(s, c)
    else:
        flow = base
    if has_tumour:
        tdist = ndimage.distance_transform_edt(comp != TUMOUR) * g
    else:
        tdist = np.full((H, W), 1e9)
    return Layout(g, comp, kind, flow.astype(np.float32), tdist.astype(np.float32), recipe.key, has_tumour)
