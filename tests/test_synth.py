"""The synthetic tissue: panel, cell types, determinism, realism of expression, morphology and stain."""

import glob

import numpy as np
import pandas as pd
import pytest
from conftest import MARKERS, REAL_HE, need

from stx_platform.sources.features import is_control
from stx_platform.synth import layout as L
from stx_platform.synth.celltypes import AMBIGUOUS, EPITHELIAL_TYPES, SHARED_TYPES, all_programs
from stx_platform.synth.organs import HELDOUT_ORGANS, RECIPES, TRAINING_ORGANS
from stx_platform.synth.panel import UNINFORMATIVE, control_features, gene_panel
from stx_platform.synth.slide import build_slide
from stx_platform.taxonomy import CONNECTIVE, EPITHELIAL, INFLAMMATORY, NEOPLASTIC, UNKNOWN


@pytest.fixture(scope="module")
def breast():
    return build_slide("T", "breast", 11, 2500, mpp=0.2125, tumour=True)


def test_panel_is_xenium_like():
    panel = gene_panel()
    assert 300 <= len(panel) <= 400 and len(set(panel)) == len(panel)
    for t in list(SHARED_TYPES.values()) + list(EPITHELIAL_TYPES.values()):
        assert set(t.markers) <= set(panel), t.name
    assert len(set(UNINFORMATIVE) - {g for gs in all_programs().values() for g in gs}) >= 50
    assert not is_control(panel).any()
    assert is_control(control_features("v1")).all() and is_control(control_features("modern")).all()


def test_panel_genes_are_real_human_symbols():
    """Every panel gene appears in at least one real marker resource (PanglaoDB, CellMarker 2.0, CancerSEA)."""
    pg = pd.read_csv(need(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv"), sep="\t")
    cm = pd.read_csv(need(MARKERS / "Cell_marker_Human.csv.gz"), low_memory=False)
    known = set(pg["official gene symbol"]) | set(cm["Symbol"].dropna())
    for f in glob.glob(str(MARKERS / "cancersea" / "*.txt")):
        known |= set(pd.read_csv(f, sep="\t")["GeneName"])
    missing = [g for g in gene_panel() if g not in known]
    assert not missing, missing


def test_organs_and_types_cover_the_paper():
    assert set(TRAINING_ORGANS) == {"breast", "colon", "kidney", "liver", "lung", "ovary", "pancreas", "prostate",
                                    "skin", "stomach"}
    assert len(HELDOUT_ORGANS) >= 3 and set(TRAINING_ORGANS) | set(HELDOUT_ORGANS) == set(RECIPES)


def test_fine_types_map_onto_all_classes(breast):
    cat = breast.cells.catalogue
    by_class = {}
    for t in cat.values():
        by_class.setdefault(t.pannuke_class, set()).add(t.name)
    assert sum(len(v) for k, v in by_class.items() if k != UNKNOWN) >= 10
    assert {NEOPLASTIC, EPITHELIAL, INFLAMMATORY, CONNECTIVE, UNKNOWN} <= set(by_class)
    assert {a.name for a in AMBIGUOUS} <= by_class[UNKNOWN]
    present = set(breast.cells.pannuke_class())
    assert {NEOPLASTIC, EPITHELIAL, INFLAMMATORY, CONNECTIVE, UNKNOWN} <= present


def test_same_seed_same_slide_other_seed_other_slide(breast):
    again = build_slide("T", "breast", 11, 2500, mpp=0.2125, tumour=True)
    assert np.array_equal(again.counts, breast.counts)
    assert np.array_equal(again.nuc_he_px, breast.nuc_he_px)
    other = build_slide("T", "breast", 12, 2500, mpp=0.2125, tumour=True)
    assert not np.array_equal(other.cells.xy[:100], breast.cells.xy[:100])


def test_rendering_is_seamless_across_tiles(breast):
    r = breast.renderer()
    ys, xs = np.mgrid[0:breast.height_px - 600:64, 0:breast.width_px - 600:64].astype(np.float32)
    focus = r._section((xs + 0.5) * breast.mpp, (ys + 0.5) * breast.mpp)[1].ravel()
    blurred = int(np.argmax(focus))
    assert focus[blurred] > 0.9
    # a sharp region and an out-of-focus one (its blur is the widest the renderer applies)
    for x0, y0 in ((400, 400), (int(xs.ravel()[blurred]), int(ys.ravel()[blurred]))):
        whole = r.render(x0, y0, 512, 512).astype(int)
        part = r.render(x0 + 100, y0 + 200, 256, 256).astype(int)
        diff = np.abs(whole[200:456, 100:356] - part)
        assert np.percentile(diff, 99) <= 3 and diff.mean() < 1.0


def test_expression_is_realistic(breast):
    c = breast.counts
    lib = c.sum(1)
    lq = breast.cells.low_quality
    assert 40 <= np.median(lib[~lq]) <= 400                 # tens to hundreds per cell
    assert 0.01 <= (lib < 15).mean() <= 0.12               # a few very-low-count cells
    assert (c == 0).mean() > 0.6                            # sparse, with dropout
    genes = list(gene_panel())
    types = breast.cells.type_name
    t_cells = np.isin(types, ["CD4+_T_Cells", "CD8+_T_Cells"]) & ~lq & (breast.cells.partner < 0)
    cd3e = c[:, genes.index("CD3E")]
    assert cd3e[t_cells].mean() > 5 * cd3e[~t_cells].mean()  # canonical markers mark their type
    # overdispersion: variance well above the mean within one type (negative binomial, not Poisson)
    fib = (types == "Stromal") & ~lq & (breast.cells.partner < 0)
    col = c[fib][:, genes.index("COL1A1")]
    assert col.var() > 1.5 * col.mean()
    assert (breast.cells.partner >= 0).mean() > 0.005       # doublets exist


def test_morphology_by_type(breast):
    sh, types = breast.cells.shapes, breast.cells.type_name
    cat = breast.cells.catalogue
    morph = np.array([cat[t].morphology for t in types])
    area = sh.area()
    assert area[morph == "tumour"].mean() > 1.5 * area[np.isin(morph, ["epithelial", "epithelial_columnar"])].mean()
    assert area[morph == "lymphocyte"].mean() < 0.6 * area[np.isin(morph, ["epithelial", "epithelial_columnar"])].mean()
    assert (sh.a / sh.b)[morph == "fibroblast"].mean() > 3.0                 # spindle
    assert (sh.b / sh.a)[morph == "lymphocyte"].mean() > 0.85               # round
    assert sh.darkness[morph == "tumour"].mean() > sh.darkness[morph == "epithelial"].mean()  # hyperchromatic
    assert sh.harm[morph == "tumour"].std() > 2 * sh.harm[morph == "lymphocyte"].std()         # pleomorphic


def test_architecture_holds_the_expected_structures(breast):
    comp = breast.layout.comp
    for code in (L.STROMA, L.EPITHELIUM, L.LUMEN, L.TUMOUR, L.VESSEL_LUMEN, L.VESSEL_WALL, L.GLASS):
        assert (comp == code).any(), L.COMPARTMENTS[code]
    # epithelial types sit in epithelium, tumour cells in tumour
    cls = np.array([breast.cells.catalogue[t].pannuke_class for t in breast.cells.type_name])
    assert (breast.cells.compartment[cls == NEOPLASTIC] == L.TUMOUR).mean() > 0.95


def _nuclei_vs_stroma(slide, img, x0, y0):
    import cv2

    mask = np.zeros(img.shape[:2], np.uint8)
    for p in slide.nuc_he_px:
        q = p - (x0, y0)
        if (q >= 0).all() and (q < img.shape[0]).all():
            cv2.fillPoly(mask, [np.round(q).astype(np.int32)], 1)
    return img[mask == 1].astype(float), img[mask == 0].astype(float)


def test_stain_looks_like_h_and_e_and_varies_between_slides(breast):
    img = breast.renderer().render(1000, 1000, 600, 600)
    nuc, rest = _nuclei_vs_stroma(breast, img, 1000, 1000)
    assert nuc.mean() < rest.mean() - 30                       # nuclei are dark
    assert nuc[:, 2].mean() > nuc[:, 1].mean() + 15             # haematoxylin: blue-purple
    tissue = rest[rest.mean(1) < 235]
    assert tissue[:, 0].mean() > tissue[:, 1].mean() + 25       # eosin: pink
    other = build_slide("U", "breast", 13, 800, mpp=0.2125)
    assert not np.allclose(other.stain.h, breast.stain.h) and not np.allclose(other.stain.e, breast.stain.e)


def _tumour_field(slide, w=500, h=300):
    """The window of a slide holding the most tumour nuclei (the real tile is a tumour field)."""
    tum = slide.cells.xy[slide.cells.compartment == L.TUMOUR] / slide.mpp
    best = max(((((tum[:, 0] > x - w / 2) & (tum[:, 0] < x + w / 2) & (tum[:, 1] > y - h / 2) &
                  (tum[:, 1] < y + h / 2)).sum(), int(x - w / 2), int(y - h / 2)) for x, y in tum[::20]))
    return slide.renderer().render(best[1], best[2], w, h)


def test_slides_are_stained_with_real_stain_vectors():
    """Each slide's H and E are one real slide's Macenko pair, lightly perturbed, so slides vary as
    real ones do (not as noise around one pair)."""
    from stx_platform.stain import angle_deg
    from stx_platform.synth.render import REAL_STAINS

    pairs = []
    for seed in range(8):
        st = build_slide("S", "kidney", seed, 300).stain
        near = min(range(len(REAL_STAINS)), key=lambda i: angle_deg(st.h, REAL_STAINS[i][0]) + angle_deg(
            st.e, REAL_STAINS[i][1]))
        assert angle_deg(st.h, REAL_STAINS[near][0]) < 6 and angle_deg(st.e, REAL_STAINS[near][1]) < 6
        pairs.append(near)
    assert len(set(pairs)) >= 4


def test_red_cells_are_discs_with_pale_centres():
    from stx_platform.synth.render import _red_cells

    y, x = np.mgrid[0:800, 0:800] * 0.1                    # 80 x 80 um at 0.1 um
    # sites spread out (pitch 20 um instead of 6.2) so that every disc stands alone
    d = _red_cells(x.astype(np.float32), y.astype(np.float32), 5, pitch=20.0)
    import scipy.ndimage as ndi

    lab, n = ndi.label(d > 0)
    sizes = np.bincount(lab.ravel())[1:]
    single = [i + 1 for i, a in enumerate(sizes) if 0.6 * np.pi * 35 ** 2 < a < 1.2 * np.pi * 40 ** 2]
    assert n >= 8 and len(single) == n                      # ~7.5 um discs
    for i in single:
        m = lab == i
        cy, cx = ndi.center_of_mass(m)
        dist = np.hypot(*(np.argwhere(m) - (cy, cx)).T)
        vals = d[m]
        r = dist.max()
        assert vals[dist < 0.3 * r].mean() < vals[(dist > 0.6 * r) & (dist < 0.85 * r)].mean() - 0.15


def test_section_artefacts_vary_thickness_and_focus_across_the_slide(breast):
    r = breast.renderer()
    y, x = np.mgrid[0:400, 0:400].astype(np.float32) * 25.0  # a 10 x 10 mm grid of points (um)
    thick, focus = r._section(x, y)
    assert 0.8 < thick.min() and np.percentile(thick, 50) == pytest.approx(1.0, abs=0.05)
    assert (thick > 1.4).mean() > 0                          # folded somewhere, ...
    assert (thick > 1.4).mean() < 0.05                        # ... in thin bands
    assert 0.02 < (focus > 0).mean() < 0.5 and focus.max() == pytest.approx(1.0)


def test_colours_are_close_to_a_real_h_and_e_tile():
    """Synthetic tumour fields and the real H&E tumour tile share the H&E colour signature.

    Stain varies from slide to slide on purpose (as between scanners and labs), so the hue of
    the mean colour is compared over five slides: median within 20 degrees of the real tile,
    every slide within 30 (a pink-vs-blue miss is 40+ degrees)."""
    import colorsys

    from PIL import Image

    real = np.asarray(Image.open(need(REAL_HE)).convert("RGB")).reshape(-1, 3).astype(float)

    def hsv(px):
        return np.array(colorsys.rgb_to_hsv(*(px.mean(0) / 255)))

    ref = hsv(real)
    gaps = []
    for seed in range(21, 26):
        px = _tumour_field(build_slide("C", "breast", seed, 1500, mpp=0.2125, tumour=True)).reshape(-1, 3).astype(float)
        for img in (real, px):
            dark = img[img.mean(1) < np.percentile(img.mean(1), 10)]
            assert dark[:, 2].mean() > dark[:, 1].mean() and dark[:, 0].mean() > dark[:, 1].mean()  # purple nuclei
            assert img[:, 0].mean() > img[:, 1].mean() + 20      # green absorbed most: H&E hue
        h = hsv(px)
        dh = abs(h[0] - ref[0]) * 360
        gaps.append(min(dh, 360 - dh))
        assert abs(h[1] - ref[1]) < 0.15 and abs(h[2] - ref[2]) < 0.2
    assert np.median(gaps) < 20 and max(gaps) < 30, gaps


def test_structures_paint_exactly_their_polygon():
    """Windowed painting (what keeps 200k-cell sections fast) equals a fill of the whole grid."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        cx, cy = rng.uniform(-10, 90, 2)
        poly = L._star_polygon(cx, cy, rng.uniform(2, 30), rng.uniform(2, 30), rng.uniform(0, 3), rng, folds=0.5)
        full = np.zeros((80, 100), np.uint8)
        L._fill(full, poly, 1)
        win, m = L._poly_mask(full.shape, poly)
        painted = np.zeros_like(full)
        painted[win][m] = 1
        assert np.array_equal(painted, full)
