"""H&E rendering of a synthetic section, one block at a time, without seams.

Light absorption follows Beer-Lambert with two stains: each pixel has a haematoxylin and an
eosin concentration, and RGB = 255 * exp(-(cH * H + cE * E)) for stain optical-density
vectors H and E. Concentration maps come from the tissue: stroma is eosinophilic collagen
with thin wavy fibres along the flow field, lumina and glass are nearly empty, vessels hold
red cells (biconcave discs with pale centres), fat is empty with thin membranes, cytoplasm is
drawn per cell with membranes between neighbours, and nuclei carry haematoxylin with chromatin
texture, a darker rim, pale (vesicular) centres and nucleoli. The section itself is uneven:
its thickness varies by +-10 %, it lies folded (doubled) along thin bands in some regions, and
some regions are out of focus. Every random texture is a function of slide coordinates (hash
noise), so any block renders identically whichever tiling asks for it. Calibration against
real H&E: each slide's stain vectors are one real slide's Macenko pair (``REAL_STAINS``);
nuclear haematoxylin matches real breast-cancer nuclei (``NUCLEUS_H``); cytoplasm and stroma
cE 0.4-0.9.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stx_platform.synth import layout as L
from stx_platform.synth.cells import CellTable
from stx_platform.synth.noise import _hash01, fractal_noise, pixel_noise, value_noise

# (haematoxylin, eosin) of the cytoplasm, by CellType.cytoplasm
CYTOPLASM = {
    "pink": (0.16, 0.78), "epithelial": (0.24, 0.66), "tumour": (0.30, 0.74), "scant": (0.22, 0.45),
    "basophilic": (0.55, 0.45), "pale_pink": (0.14, 0.50), "granular": (0.45, 0.55), "stroma": (-1, -1),
    "muscle": (0.12, 0.98), "fat": (-1, -1), "mucin": (0.22, 0.14), "hepatocyte": (0.20, 1.0),
    "foamy": (0.14, 0.42), "basophilic_apical": (0.5, 0.62), "keratin": (0.10, 0.88),
}
_CYTO_KEYS = list(CYTOPLASM)


#: haematoxylin of a nucleus of darkness 1: Macenko concentrations of real breast-cancer nuclei
#: (NuCLS, median 1.20) against the rendered ones (1.3-2.0 with 1.45 here before)
NUCLEUS_H = 1.15
DEFOCUS_PX = 2.2   # extra blur (px at 0.25 um/px) where the section is out of focus


@dataclass(frozen=True)
class Stain:
    h: np.ndarray          # OD vector of haematoxylin (unit, RGB)
    e: np.ndarray          # OD vector of eosin
    rbc: np.ndarray        # OD vector of red cells (eosin-rich, redder)
    h_gain: float
    e_gain: float
    glass: np.ndarray      # RGB of empty glass
    blur: float            # optics, px


#: (H, E) OD vectors of real H&E slides, Macenko's estimate (:func:`stx_platform.stain.macenko`):
#: the 15 NuCLS breast-cancer tiles (Amgad et al. 2022, CC0) and stardist's H&E test image (BSD-3). A
#: slide of style 'hest' is stained with one pair, lightly perturbed.
REAL_STAINS = np.array([
    [[0.595, 0.715, 0.367], [0.212, 0.869, 0.448]], [[0.621, 0.689, 0.373], [0.239, 0.867, 0.438]],
    [[0.620, 0.682, 0.389], [0.206, 0.874, 0.439]], [[0.606, 0.684, 0.405], [0.129, 0.916, 0.381]],
    [[0.622, 0.696, 0.360], [0.248, 0.852, 0.461]], [[0.554, 0.734, 0.392], [0.228, 0.793, 0.565]],
    [[0.556, 0.745, 0.369], [0.290, 0.838, 0.462]], [[0.615, 0.708, 0.348], [0.309, 0.815, 0.490]],
    [[0.566, 0.734, 0.376], [0.270, 0.828, 0.491]], [[0.577, 0.731, 0.364], [0.297, 0.835, 0.464]],
    [[0.585, 0.721, 0.371], [0.291, 0.803, 0.520]], [[0.593, 0.722, 0.357], [0.309, 0.816, 0.488]],
    [[0.586, 0.721, 0.370], [0.284, 0.800, 0.529]], [[0.616, 0.703, 0.355], [0.312, 0.838, 0.448]],
    [[0.549, 0.747, 0.375], [0.294, 0.849, 0.438]], [[0.547, 0.733, 0.404], [0.312, 0.775, 0.549]],
])


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def slide_stain(rng: np.random.Generator, style: str = "hest") -> Stain:
    """A stain for one slide; ``style`` 'hest' (training slides) or 'pannuke' (validation look)."""
    if style == "pannuke":
        h0, e0 = np.array([0.65, 0.70, 0.29]), np.array([0.10, 0.93, 0.35])
        gains = (rng.uniform(0.75, 0.95), rng.uniform(0.8, 1.05))
        glass = np.array([246, 244, 248])
    else:
        gains = (rng.uniform(0.85, 1.15), rng.uniform(0.8, 1.2))
        glass = np.array([238, 236, 241]) + rng.integers(-6, 6, 3)
        h0, e0 = REAL_STAINS[int(rng.integers(len(REAL_STAINS)))]
    h = _unit(h0 + rng.normal(0, 0.02 if style == "hest" else 0.04, 3))
    e = _unit(e0 + rng.normal(0, 0.02 if style == "hest" else 0.05, 3))
    rbc = _unit([0.07, 0.75, 0.66] + rng.normal(0, 0.03, 3))   # orange-red: absorbs green and blue
    return Stain(h, e, rbc, gains[0], gains[1], glass.astype(np.float64), float(rng.uniform(0.6, 0.9)))


@dataclass
class CellGeometry:
    """Vertices of nuclei and cell bodies in level-0 pixels, ready to rasterise."""

    nuc_xy: np.ndarray                  # (n, k, 2) float32
    cell_xy: list[np.ndarray]           # n arrays (m_i, 2) float32, may be empty


class SlideRenderer:
    def __init__(self, layout: L.Layout, cells: CellTable, geom: CellGeometry, mpp: float, stain: Stain,
                 seed: int):
        self.layout = layout
        self.cells = cells
        self.geom = geom
        self.mpp = float(mpp)
        self.stain = stain
        self.seed = int(seed)
        cat = cells.catalogue
        self.cyto = np.array([_CYTO_KEYS.index(cat[t].cytoplasm) for t in cells.type_name], np.int16)
        cpx = cells.xy / self.mpp
        self._order = np.argsort(cpx[:, 1], kind="stable")
        self._ys = cpx[self._order, 1]
        self._xs = cpx[self._order, 0]
        ext = np.abs(geom.nuc_xy - cpx[:, None, :]).max(1).max(1)
        cext = np.array([np.abs(c - p).max() if len(c) else 0 for c, p in zip(geom.cell_xy, cpx)])
        self._reach = float(max(ext.max(initial=0), cext.max(initial=0))) + 4

    def _cells_in(self, x0, y0, x1, y1) -> np.ndarray:
        r = self._reach
        lo, hi = np.searchsorted(self._ys, [y0 - r, y1 + r])
        sel = self._order[lo:hi]
        xs = self._xs[lo:hi]
        return sel[(xs > x0 - r) & (xs < x1 + r)]

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) for the level-0 pixel box starting at (x0, y0)."""
        m = 10   # margin: about 3 sigma of the widest blur (defocus)
        X0, Y0, W, H = x0 - m, y0 - m, w + 2 * m, h + 2 * m
        s, mpp = self.seed, self.mpp
        # tissue background on a coarser grid (~0.45 um), upsampled: it is smooth at that scale
        f = max(1, int(round(0.45 / mpp)))
        Hc, Wc = -(-H // f) + 1, -(-W // f) + 1
        cxp = X0 + (np.arange(Wc, dtype=np.float32) + 0.5) * f - 0.5
        cyp = Y0 + (np.arange(Hc, dtype=np.float32) + 0.5) * f - 0.5
        cux, cuy = np.meshgrid((cxp + 0.5) * mpp, (cyp + 0.5) * mpp)
        bH, bE, bR = self._background(cux, cuy)
        thick, focus = self._section(cux, cuy)
        up = (Wc * f, Hc * f)
        cH = cv2.resize(bH, up, interpolation=cv2.INTER_LINEAR)[:H, :W]
        cE = cv2.resize(bE, up, interpolation=cv2.INTER_LINEAR)[:H, :W]
        cR = cv2.resize(bR, up, interpolation=cv2.INTER_LINEAR)[:H, :W]

        px = np.arange(X0, X0 + W, dtype=np.float32)
        py = np.arange(Y0, Y0 + H, dtype=np.float32)
        gx, gy = np.meshgrid(px, py)
        idx = self._cells_in(X0, Y0, X0 + W, Y0 + H)
        if len(idx):
            ux, uy = (gx + 0.5) * mpp, (gy + 0.5) * mpp
            self._draw_cytoplasm(idx, X0, Y0, H, W, cH, cE, ux, uy)
            self._draw_nuclei(idx, X0, Y0, H, W, ux, uy, cH, cE)

        # uneven section thickness and folds scale every stain alike
        thick = cv2.resize(thick, up, interpolation=cv2.INTER_LINEAR)[:H, :W]
        cH *= thick
        cE *= thick
        cR *= thick
        # sensor noise, optics (sharp, or defocused where the section was not flat), stain -> RGB
        noise = pixel_noise(gx, gy, s + 20)
        cH += 0.03 * noise
        cE += 0.03 * np.roll(noise, 7, axis=1)
        b = self.stain.blur
        blurred = [cv2.GaussianBlur(c, (0, 0), b) for c in (cH, cE, cR)]
        if float(focus.max()) > 0:
            focus = cv2.resize(focus, up, interpolation=cv2.INTER_LINEAR)[:H, :W]
            sigma = float(np.hypot(DEFOCUS_PX * 0.25 / mpp, b))     # the two blurs compound
            soft = [cv2.GaussianBlur(c, (0, 0), sigma) for c in (cH, cE, cR)]
            blurred = [c + focus * (d - c) for c, d in zip(blurred, soft)]
        cH, cE, cR = blurred
        st_ = self.stain
        hv = (st_.h * st_.h_gain).astype(np.float32)
        ev = (st_.e * st_.e_gain).astype(np.float32)
        rv = st_.rbc.astype(np.float32)
        np.clip(cH, 0, None, out=cH)
        np.clip(cE, 0, None, out=cE)
        rgb = np.empty((h, w, 3), np.uint8)
        sl = (slice(m, m + h), slice(m, m + w))
        for ch in range(3):
            od = cH[sl] * hv[ch] + cE[sl] * ev[ch] + cR[sl] * rv[ch]
            val = np.float32(st_.glass[ch]) * np.exp(-od) + 1.5 * noise[sl]
            rgb[..., ch] = np.clip(val, 0, 255)
        return rgb

    def _fibres(self, ux, uy, flow, n_dir: int = 6):
        """Collagen texture: noise stretched along each of ``n_dir`` fixed directions, blended by
        how close each direction is to the local flow (fixed directions leave no swirl artefacts)."""
        out = np.zeros(ux.shape, np.float32)
        wsum = np.zeros(ux.shape, np.float32)
        for k in range(n_dir):
            a = np.pi * k / n_dir
            w = np.cos(flow - np.float32(a))
            w *= w
            w *= w
            w *= w
            if float(w.max()) < 1e-3:
                continue
            ca, sa = np.float32(np.cos(a)), np.float32(np.sin(a))
            u = ux * ca + uy * sa
            v = uy * ca - ux * sa
            # fibres ~1-2 um thick and ~10 um long, waving across their course
            v = v + 1.4 * value_noise(u, v, 12.0, self.seed + 70 + k)
            n = 0.65 * value_noise(u * 0.12, v, 1.1, self.seed + 40 + k) + 0.35 * value_noise(
                u * 0.3, v, 4.0, self.seed + 50 + k)
            out += w * n
            wsum += w
        return out / np.maximum(wsum, 1e-6)

    def _section(self, ux: np.ndarray, uy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Section artefacts on a um grid: a stain multiplier (uneven thickness, +-10 % over a few
        hundred um; folds, thin curved bands where the section lies doubled, in some regions
        only) and a defocus weight 0..1 (patches where the section was not flat on the glass)."""
        s = self.seed
        thick = 1.0 + 0.10 * fractal_noise(ux, uy, 350.0, s + 60, 2)
        line = np.abs(value_noise(ux, uy, 900.0, s + 61))
        gate = np.clip((value_noise(ux, uy, 2500.0, s + 62) - 0.35) * 5.0, 0, 1)
        fold = np.clip(1.0 - line / 0.012, 0, 1) * gate
        thick = thick * (1.0 + 0.85 * fold)
        focus = np.clip((value_noise(ux, uy, 700.0, s + 63) - 0.65) * 6.0, 0, 1)   # ~10 % of a slide
        return thick.astype(np.float32), focus.astype(np.float32)

    def _background(self, ux: np.ndarray, uy: np.ndarray):
        """Haematoxylin, eosin and red-cell concentrations of the tissue without cells (2-D um grids)."""
        s = self.seed
        lay = self.layout
        # organic compartment borders: warp the lookup by a couple of microns
        wx = ux + 1.6 * value_noise(ux, uy, 6.0, s + 1)
        wy = uy + 1.6 * value_noise(ux, uy, 6.0, s + 2)
        comp, kind = lay.smooth_lookup(wx, wy)
        cH = np.zeros(ux.shape, np.float32)
        cE = np.zeros(ux.shape, np.float32)
        cR = np.zeros(ux.shape, np.float32)
        fine = value_noise(ux, uy, 1.2, s + 3)
        present = set(np.unique(comp).tolist())

        if present & {L.STROMA, L.VESSEL_WALL, L.MUSCLE}:
            fib = self._fibres(ux, uy, lay.smooth_flow(wx, wy))
            st = np.isin(comp, (L.STROMA, L.VESSEL_WALL))
            cleft = np.clip((fractal_noise(ux, uy, 30.0, s + 6, 2) + 0.6) * 2.0, 0, 1)
            cE[st] = ((0.50 + 0.42 * np.tanh(2.0 * fib)) * (0.4 + 0.6 * cleft))[st]
            cH[st] = (0.07 + 0.03 * fine)[st]
            vw = comp == L.VESSEL_WALL
            cE[vw] = 0.7 + 0.1 * fine[vw]
            mu = comp == L.MUSCLE
            cE[mu] = (0.84 + 0.16 * fib)[mu]
            cH[mu] = 0.13
        for code, (hh, ee) in ((L.EPITHELIUM, (0.22, 0.64)), (L.BASAL, (0.2, 0.66)), (L.TUMOUR, (0.28, 0.70)),
                               (L.IMMUNE, (0.3, 0.42))):
            if code in present:
                sel = comp == code
                cH[sel] = hh * (1 + 0.15 * fine[sel])
                cE[sel] = ee * (1 + 0.1 * fine[sel])
        if L.EPITHELIUM in present:
            for k, (hh, ee) in ((L.KIND_PLATES, (0.2, 0.95)), (L.KIND_ALVEOLAR, (0.14, 0.62)),
                                (L.KIND_EPIDERMIS, (0.13, 0.82))):
                sel = (comp == L.EPITHELIUM) & (kind == k)
                cH[sel] = hh * (1 + 0.2 * fine[sel])
                cE[sel] = ee * (1 + 0.1 * fine[sel])
        if L.LUMEN in present:
            lu = comp == L.LUMEN
            smooth = fractal_noise(ux, uy, 12.0, s + 8, 2)
            sec = lu & (kind == L.LUMEN_STYLES["secretion"])
            cE[sec] = np.clip(0.22 + 0.12 * smooth, 0, 1)[sec]
            col = lu & (kind == L.LUMEN_STYLES["colloid"])
            crack = np.abs(value_noise(ux, uy * 0.3, 30.0, s + 9)) < 0.03
            cE[col & ~crack] = 0.72 + 0.05 * fine[col & ~crack]
            cH[col] = 0.05
            muc = lu & (kind == L.LUMEN_STYLES["mucin"])
            wisp = np.clip(fractal_noise(ux, uy, 6.0, s + 10, 3), 0, 1)
            cH[muc] = (0.1 + 0.22 * wisp)[muc]
            cE[muc] = (0.05 + 0.1 * wisp)[muc]
            cE[lu & (kind == 0)] = 0.03
        if L.KERATIN in present:
            ke = comp == L.KERATIN
            lam = value_noise(ux * 0.25, uy * 3.0, 6.0, s + 11)
            cE[ke] = np.clip(0.55 + 0.35 * lam, 0.05, 1)[ke]
            cH[ke] = 0.04
        if L.NECROSIS in present:
            ne = comp == L.NECROSIS
            debris = value_noise(ux, uy, 1.0, s + 12) > 0.55
            cE[ne] = 0.55 + 0.1 * fine[ne]
            cH[ne] = np.where(debris, 1.3, 0.32)[ne]
        if L.VESSEL_LUMEN in present:
            vl = comp == L.VESSEL_LUMEN
            rbc = _red_cells(ux[vl], uy[vl], s + 13)
            cR[vl] = rbc
            cE[vl] = np.where(rbc > 0.0, cE[vl], 0.08)
        if L.ADIPOSE in present:
            ad = comp == L.ADIPOSE
            mem = _worley_edges(ux, uy, 45.0, s + 14)
            cE[ad] = np.where(mem < 0.9, 0.6, 0.015)[ad]
            cH[ad] = np.where(mem < 0.9, 0.05, 0.0)[ad]
        return cH, cE, cR

    def _draw_cytoplasm(self, idx, X0, Y0, H, W, cH, cE, ux, uy):
        lab = np.zeros((H, W), np.int32)
        off = np.array([X0, Y0], np.float32)
        for i in idx:
            poly = self.geom.cell_xy[i]
            if len(poly) < 3 or CYTOPLASM[_CYTO_KEYS[self.cyto[i]]][0] < 0:
                continue
            cv2.fillPoly(lab, [np.round((poly - off) * 16).astype(np.int32)], int(i) + 1, cv2.LINE_8, 4)
        has = lab > 0
        if not has.any():
            return
        li = lab[has] - 1
        table = np.array([CYTOPLASM[k] for k in _CYTO_KEYS], np.float32)
        hc = table[self.cyto[li], 0]
        ec = table[self.cyto[li], 1]
        gran = (self.cyto[li] == _CYTO_KEYS.index("granular")) | (self.cyto[li] == _CYTO_KEYS.index("hepatocyte"))
        tex = value_noise(ux, uy, 1.0, self.seed + 3)[has]
        # blend with the compartment's own cytoplasm tone so cell bodies read as tissue, not halos
        cH[has] = 0.45 * cH[has] + 0.55 * (hc * (1 + 0.15 * tex) + np.where(gran, 0.12 * np.clip(tex, 0, 1), 0))
        cE[has] = 0.45 * cE[has] + 0.55 * ec * (1 + 0.12 * tex)
        # membranes between neighbouring cells
        edge = np.zeros_like(has)
        edge[:, 1:] |= (lab[:, 1:] != lab[:, :-1]) & (lab[:, 1:] > 0) & (lab[:, :-1] > 0)
        edge[1:, :] |= (lab[1:, :] != lab[:-1, :]) & (lab[1:, :] > 0) & (lab[:-1, :] > 0)
        cE[edge] += 0.18
        cH[edge] += 0.05

    def _radius_table(self, idx, li, th, bins: int = 64):
        """Nucleus radius at local angle ``th`` for pixel owners ``li``, by linear interpolation in a
        per-nucleus table (much cheaper than evaluating the harmonics per pixel)."""
        grid = np.linspace(0, 2 * np.pi, bins + 1)
        tab = self.cells.shapes.radius(np.broadcast_to(grid, (len(idx), bins + 1)).copy(), idx)
        pos = np.empty(int(idx.max()) + 1, np.int64)
        pos[idx] = np.arange(len(idx))
        t = (np.mod(th, 2 * np.pi) / (2 * np.pi) * bins)
        k = np.minimum(t.astype(np.int64), bins - 1)
        fr = t - k
        row = pos[li]
        return tab[row, k] * (1 - fr) + tab[row, k + 1] * fr

    def _draw_nuclei(self, idx, X0, Y0, H, W, ux, uy, cH, cE):
        lab = np.zeros((H, W), np.int32)
        off = np.array([X0, Y0], np.float32)
        for i in idx:
            cv2.fillPoly(lab, [np.round((self.geom.nuc_xy[i] - off) * 16).astype(np.int32)], int(i) + 1,
                         cv2.LINE_8, 4)
        has = lab > 0
        if not has.any():
            return
        li = lab[has] - 1
        sh = self.cells.shapes
        x, y = ux[has].astype(np.float64), uy[has].astype(np.float64)
        lx, ly = sh.to_local(x, y, li)
        th = np.arctan2(ly, lx)
        rho = np.sqrt(lx * lx + ly * ly) / np.maximum(self._radius_table(idx, li, th), 1e-3)
        rho = np.clip(rho, 0, 1.2)
        s = self.seed
        chrom = (0.65 * value_noise(ux, uy, 1.0, s + 30) + 0.35 * value_noise(ux, uy, 0.45, s + 32))[has]
        chrom = chrom * sh.coarseness[li] * 1.3
        speck = pixel_noise(np.floor(x / 0.35), np.floor(y / 0.35), s + 31) * 0.5 * sh.coarseness[li]
        ves = sh.vesicular[li]
        body = 1.0 - ves * 0.5 * (1 - rho ** 2) + 0.22 * np.clip((rho - 0.8) / 0.2, 0, 1)
        hval = NUCLEUS_H * sh.darkness[li] * body * (1 + 0.5 * chrom + 0.35 * speck)
        for j in range(sh.nucleoli.shape[1]):
            nx, ny, nr = sh.nucleoli[li, j, 0], sh.nucleoli[li, j, 1], sh.nucleoli[li, j, 2]
            inn = (nr > 0) & ((lx - nx) ** 2 + (ly - ny) ** 2 < nr ** 2)
            hval = np.where(inn, hval + 0.9 + 0.3 * sh.darkness[li], hval)
        cH[has] = hval
        cE[has] = 0.22 + 0.1 * np.clip(chrom, -1, 1)


def _red_cells(ux, uy, seed, pitch: float = 6.2, radius: float = 3.6):
    """Red-cell density (0 outside a cell): biconcave discs ~7.5 um across on a jittered grid
    (some sites empty), thin at the pale centre and thickest at the rim; rouleaux and overlap
    where neighbours crowd."""
    gxf, gyf = ux / pitch, uy / pitch
    ix, iy = np.floor(gxf).astype(np.int64), np.floor(gyf).astype(np.int64)
    out = np.zeros(ux.shape, np.float32)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            cx, cy = ix + dx, iy + dy
            keep = _hash01(cx, cy, seed + 2) < 0.8
            fx = cx + 0.5 + 0.6 * (_hash01(cx, cy, seed) - 0.5)
            fy = cy + 0.5 + 0.6 * (_hash01(cx, cy, seed + 1) - 0.5)
            r = radius * (0.9 + 0.2 * _hash01(cx, cy, seed + 3)) / pitch
            d = np.sqrt((gxf - fx) ** 2 + (gyf - fy) ** 2).astype(np.float32) / r
            rim = np.clip((1.0 - d) / 0.2, 0, 1)            # 1 inside, to 0 over the outer fifth
            disc = np.where(keep & (d < 1.0), 0.45 + rim * (0.25 + 0.75 * np.clip(d / 0.75, 0, 1) ** 2), 0.0)
            out = np.maximum(out, disc.astype(np.float32))
    return out


def _worley_edges(ux, uy, scale, seed):
    """Distance (um) to the nearest border between jittered-grid cells: thin membranes of fat."""
    gxf, gyf = ux / scale, uy / scale
    ix, iy = np.floor(gxf).astype(np.int64), np.floor(gyf).astype(np.int64)
    d1 = np.full(ux.shape, 1e9, np.float32)
    d2 = np.full(ux.shape, 1e9, np.float32)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            cx, cy = ix + dx, iy + dy
            fx = cx + 0.15 + 0.7 * _hash01(cx, cy, seed)
            fy = cy + 0.15 + 0.7 * _hash01(cx, cy, seed + 1)
            d = np.sqrt((gxf - fx) ** 2 + (gyf - fy) ** 2).astype(np.float32)
            closer = d < d1
            d2 = np.where(closer, d1, np.minimum(d2, d))
            d1 = np.where(closer, d, d1)
    return (d2 - d1) * scale / 2
