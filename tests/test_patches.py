"""Patch stage: encoders, the record schema, planning on tissue, cutting with instance maps."""

from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from pydantic import ValidationError

from stx_platform.errors import SampleError
from stx_platform.patches import (
    PATCH_SCHEMA,
    PatchConfig,
    config_from_schema,
    cut_patch,
    decode_image,
    decode_instance_map,
    encode_image,
    encode_instance_map,
    fill_polygons,
    patches_for_sample,
    plan_patches,
    records_to_table,
)
from stx_platform.patches.cut import _TISSUE, tissue_mask, tissue_share
from stx_platform.patches.schema import DICTIONARY_COLUMNS, parquet_options, schema_for
from stx_platform.sources import list_samples, read_sample
from stx_platform.sources.wsi import WSI, write_pyramid_tiff

PINK, GLASS = (205, 125, 185), (240, 239, 243)


# ---------------------------------------------------------------- hand-made slide

def _hand_slide(tmp_path, name: str, tissue_until: int | None, nuclei, mpp: float = 0.25, size=(1024, 768)):
    """A slide that is pink tissue left of x = ``tissue_until`` and glass elsewhere, with the
    given nucleus polygons (level-0 px); a stand-in exposing what the patch stage reads."""
    def render(x, y, w, h):
        out = np.empty((h, w, 3), np.uint8)
        out[:] = GLASS
        if tissue_until is not None:
            cols = np.arange(x, x + w) < tissue_until
            out[:, cols] = PINK
        return out

    path = str(tmp_path / f"{name}.tif")
    write_pyramid_tiff(path, *size, render, mpp=mpp)
    nuclei = np.asarray(nuclei, dtype=object)
    return SimpleNamespace(sample_id=name, organ="Breast", mpp=mpp, wsi=WSI(path, name), nuclei=nuclei,
                           cell_ids=pd.Index([f"c{i}" for i in range(len(nuclei))]))


def _discs(xy, r):
    return shapely.buffer(shapely.points(np.asarray(xy, float)), r, quad_segs=16)


@pytest.fixture(scope="module")
def grid_slide(tmp_path_factory):
    """Tissue on the left half (x < 512), glass on the right, a small nucleus every 64 px."""
    xy = np.stack(np.meshgrid(np.arange(32, 1024, 64), np.arange(32, 768, 64)), -1).reshape(-1, 2)
    return _hand_slide(tmp_path_factory.mktemp("hand"), "GRID", 512, _discs(xy, 8))


# ---------------------------------------------------------------- synthetic slides

@pytest.fixture(scope="module")
def samples(hest_root):
    return [read_sample(r) for r in list_samples(hest_root)]


@pytest.fixture(scope="module")
def cut(samples):
    """All default patches of every synthetic slide: (sample, config, list of tables)."""
    config = PatchConfig()
    return [(s, config, list(patches_for_sample(s, config, batch_size=16))) for s in samples]


def _rows(tables):
    return [r for t in tables for r in t.to_pylist()]


# ---------------------------------------------------------------- config

def test_config_defaults_validation_and_hash():
    c = PatchConfig()
    assert (c.size, c.mpp, c.stride, c.min_nuclei, c.min_tissue, c.image_format) == (256, 0.25, 256, 1, 0.3, "png")
    assert c.overlap == 0 and PatchConfig(stride=192).overlap == 64
    for bad in (0, -1, 257):
        with pytest.raises(ValidationError, match="stride"):
            PatchConfig(stride=bad)
    with pytest.raises(ValidationError):
        PatchConfig(strides=128)  # extra="forbid"
    with pytest.raises(ValidationError):
        PatchConfig(image_format="tiff")
    h = c.config_hash()
    assert len(h) == 12 and h == PatchConfig().config_hash() != PatchConfig(stride=128).config_hash()


# ---------------------------------------------------------------- encoders

def test_image_round_trips():
    yy, xx = np.mgrid[:256, :256]
    rng = np.random.default_rng(0)
    img = np.stack([180 + 40 * np.sin(xx / 17), 120 + 50 * np.cos(yy / 23), 170 + 30 * np.sin((xx + yy) / 31)], -1)
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    png = encode_image(img, "png")
    assert png[:4] == b"\x89PNG" and np.array_equal(decode_image(png), img)
    for q, bound in ((95, 38.0), (90, 35.0)):
        back = decode_image(encode_image(img, "jpeg", q))
        mse = np.mean((back.astype(float) - img) ** 2)
        assert back.shape == img.shape and 10 * np.log10(255 ** 2 / mse) > bound
    qoi = encode_image(img, "qoi")
    assert qoi[:4] == b"qoif" and np.array_equal(decode_image(qoi), img)
    jpeg = encode_image(img, "jpeg", 95)  # any JPEG reader (here cv2's) gets the pixels decode_image gives
    assert np.array_equal(decode_image(jpeg), cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
    with pytest.raises(ValueError):
        encode_image(img, "gif")
    for bad in (b"not an image", qoi[:40]):
        with pytest.raises(ValueError):
            decode_image(bad)


def test_png_is_lossless_standard_and_old_pngs_still_decode():
    """encode_image's PNGs (Sub rows + libdeflate) hold the exact pixels at every level, read the
    same in cv2 and PIL (which check chunk CRCs) and through the fast path; PNGs as cv2 wrote them
    for earlier shards decode to the same pixels."""
    import io

    from PIL import Image

    from stx_platform.patches import schema as S

    rng = np.random.default_rng(5)
    imgs = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), np.full((1, 1, 3), 7, np.uint8),
            rng.integers(0, 256, (1, 300, 3), dtype=np.uint8), rng.integers(0, 256, (300, 1, 3), dtype=np.uint8),
            np.zeros((256, 256, 3), np.uint8), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
            np.ascontiguousarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)[::-1, ::2])]
    for img in imgs:
        for level in (None, 0, 6, 12):
            data = encode_image(img, "png", png_compression=level)
            fast = S._png_rgb8(memoryview(data))
            assert fast is not None and np.array_equal(fast, img) and np.array_equal(decode_image(data), img)
            assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], img)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), img)
        old = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))[1].tobytes()
        assert np.array_equal(decode_image(old), img)
    with pytest.raises(ValueError):
        encode_image(imgs[0], "png", png_compression=13)


@pytest.mark.parametrize("max_id", [0, 7, 255, 300, 70_000])
@pytest.mark.parametrize("method", ["zstd", "zlib", "png"])
def test_instance_map_round_trips(max_id, method):
    rng = np.random.default_rng(max_id)
    m = np.where(rng.uniform(size=(64, 48)) < 0.5, rng.integers(1, max_id + 1, (64, 48)), 0) if max_id else \
        np.zeros((64, 48), np.int64)
    if max_id:
        m[0, 0] = max_id
    blob = encode_instance_map(m, method)
    back = decode_instance_map(blob)
    assert back.dtype == np.int32 and back.shape == (64, 48) and np.array_equal(back, m)
    kept = decode_instance_map(blob, dtype=None)                  # the stored dtype, as the ingest reads it
    assert np.array_equal(kept, m) and kept.dtype.itemsize == (1 if max_id < 256 else 2 if max_id < 65536 else 4)
    assert blob[:4] == (b"\x89PNG" if method == "png" and max_id < 65536 else b"STXI")
    assert np.array_equal(decode_instance_map(encode_instance_map(m, "zlib", np.int32)), m)


def test_instance_maps_of_older_shards_still_decode():
    """Blobs as the zlib-only encoder (before zstd, version 1) wrote them, byte for byte."""
    old8 = b"STXI\x01B\x03\x00\x00\x00\x04\x00\x00\x00x\x9cc``dd`bbdff`\x00\x00\x00S\x00\x0e"
    old16 = b"STXI\x01H\x02\x00\x00\x00\x02\x00\x00\x00x\x9cc`\xd0adg``\x00\x00\x011\x005"
    assert np.array_equal(decode_instance_map(old8), [[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 0, 0]])
    assert np.array_equal(decode_instance_map(old16), [[0, 300], [7, 0]])
    new = encode_instance_map(np.array([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 0, 0]]))
    assert new[:5] == b"STXI\x02" and new != old8  # zstd payload, told apart by the version byte


def test_instance_map_rejects_bad_input():
    with pytest.raises(ValueError):
        encode_instance_map(np.full((4, 4), -1))
    with pytest.raises(ValueError):
        encode_instance_map(np.full((4, 4), 300), dtype=np.uint8)
    with pytest.raises(ValueError):
        encode_instance_map(np.zeros((4, 4, 2), int))
    blob = encode_instance_map(np.ones((8, 8), int))
    for bad in (b"junk", blob[:-3], blob[:10]):
        with pytest.raises(ValueError):
            decode_instance_map(bad)


def test_tissue_share_is_the_tissue_masks_mean():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    img[:20] = GLASS
    img[20:40] = PINK
    img[40:45] = (10, 5, 12)  # dark artefact: saturated but too dark
    assert tissue_share(img) == tissue_mask(img).mean() and 0.1 < tissue_share(img) < 0.9
    every = np.empty((256, 256, 256, 3), np.uint8)  # all 2^24 colours: the share's table is cv2's HSV rule
    every[..., 0], every[..., 1], every[..., 2] = np.ix_(*[np.arange(256, dtype=np.uint8)] * 3)
    every = every.reshape(4096, 4096, 3)
    mask = tissue_mask(every)
    r, g, b = every[..., 0], every[..., 1], every[..., 2]
    assert np.array_equal(_TISSUE[np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)].view(bool), mask)
    assert tissue_share(every) == mask.mean() and tissue_share(every[::-1, ::3]) == mask[::-1, ::3].mean()


# ---------------------------------------------------------------- schema

def test_schema_accepts_records_and_rejects_bad_ones(cut):
    sample, config, tables = cut[0]
    rec = _rows(tables)[0]
    table = records_to_table([rec, rec], config)
    assert table.schema.equals(PATCH_SCHEMA) and table.num_rows == 2
    assert config_from_schema(table.schema) == config
    assert table.schema.field("cell_ids").type == pa.list_(pa.field("item", pa.string(), nullable=False))
    bad = [
        {k: v for k, v in rec.items() if k != "organ"},                    # missing field
        {**rec, "colour": "pink"},                                         # unexpected field
        {**rec, "x": "left"},                                              # wrong type
        {**rec, "x": 2 ** 40},                                             # out of int32
        {**rec, "size": 70_000},                                           # out of int16
        {**rec, "image": None},                                            # null
        {**rec, "image_format": "tiff"},
        {**rec, "touches_border": rec["touches_border"][:-1]},             # lists disagree
        {**rec, "nucleus_count": rec["nucleus_count"] + 1},
        {**rec, "cell_ids": [None] * len(rec["cell_ids"])},
        {**rec, "touches_border": [None] * len(rec["touches_border"])},
    ]
    for b in bad:
        with pytest.raises(SampleError, match=sample.sample_id):
            records_to_table([rec, b])


def test_shards_dictionary_encode_all_but_the_encoded_blobs(cut, tmp_path):
    """parquet_options: the image and instance map are stored plain (never repeated, so hashing them
    for a dictionary is wasted), the other columns as before; the records read back the same."""
    sample, config, tables = cut[0]
    schema = schema_for(config)
    path = str(tmp_path / "s.parquet")
    with pq.ParquetWriter(path, schema, **parquet_options()) as w:
        for t in tables:
            w.write_table(t.replace_schema_metadata(schema.metadata))
    back = pq.read_table(path)
    assert back.equals(pa.concat_tables(tables).replace_schema_metadata(schema.metadata))
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    assert set(DICTIONARY_COLUMNS) <= set(encodings)                      # names the written columns
    for col, enc in encodings.items():
        plain = col in ("image", "instance_map", "touches_border.list.element")  # booleans never were
        assert ("RLE_DICTIONARY" in enc) != plain, col


# ---------------------------------------------------------------- cutting on synthetic slides

def test_patches_for_sample_yields_schema_tables_with_nuclei(cut):
    for sample, config, tables in cut:
        assert tables and all(t.schema.equals(PATCH_SCHEMA) and 0 < t.num_rows <= 16 for t in tables)
        assert all(config_from_schema(t.schema) == config for t in tables)
        rows = _rows(tables)
        assert len(rows) >= 10 and len({r["patch_id"] for r in rows}) == len(rows)
        counts = np.array([r["nucleus_count"] for r in rows])
        assert (counts >= 1).all() and np.mean(counts) > 5
        assert np.mean([r["tissue_fraction"] for r in rows]) > 0.6
    # without the nucleus filter, most tissue patches still hold nuclei; progress reaches the end
    sample, calls = cut[0][0], []
    rows = _rows(patches_for_sample(sample, PatchConfig(min_nuclei=0), progress=lambda d, t: calls.append((d, t))))
    assert np.mean([r["nucleus_count"] > 0 for r in rows]) > 0.8
    assert calls and calls[-1][0] == calls[-1][1] >= len(rows)


def test_instance_ids_point_at_real_cells(cut):
    for sample, config, tables in cut:
        cells = set(sample.cell_ids)
        for r in _rows(tables):
            m = decode_instance_map(r["instance_map"])
            assert m.shape == (256, 256) and decode_image(r["image"]).shape == (256, 256, 3)
            n = len(r["cell_ids"])
            assert n == r["nucleus_count"] == len(r["touches_border"])
            assert np.array_equal(np.unique(m[m > 0]), np.arange(1, n + 1))
            assert set(r["cell_ids"]) <= cells and len(set(r["cell_ids"])) == n


def test_resampling_to_target_resolution(cut):
    seen = set()
    for sample, config, tables in cut:
        e = round(256 * 0.25 / sample.mpp)
        for r in _rows(tables):
            assert r["width_l0"] == r["height_l0"] == e and r["size"] == 256
            assert r["mpp"] == pytest.approx(e * sample.mpp / 256, rel=1e-6)
            assert r["slide_mpp"] == pytest.approx(sample.mpp, rel=1e-6)
            assert r["patch_id"] == f"{sample.sample_id}_{r['x']}_{r['y']}"
        seen.add((sample.mpp, e))
    assert (0.2125, 301) in seen  # 0.25 / 0.2125 um/px: 301 level-0 px per 256 px patch


def test_whole_nucleus_keeps_its_area(cut):
    sample, config, tables = cut[0]
    assert sample.mpp == 0.2125
    pos = pd.Series(np.arange(len(sample.cell_ids)), index=sample.cell_ids)
    k = 301 / 256
    tree = shapely.STRtree(sample.nuclei)
    checked = 0
    for r in _rows(tables)[:12]:
        m = decode_instance_map(r["instance_map"])
        for i, (cid, border) in enumerate(zip(r["cell_ids"], r["touches_border"]), 1):
            poly = sample.nuclei[pos[cid]]
            if border or len(tree.query(poly, predicate="intersects")) > 1:  # cut, or shares pixels
                continue
            expected = poly.area / k ** 2
            if expected < 80:
                continue
            assert (m == i).sum() == pytest.approx(expected, rel=0.10), cid
            checked += 1
    assert checked >= 20


def test_cut_patch_matches_the_batched_path(cut):
    sample, config, tables = cut[1]
    for r in _rows(tables)[::7]:
        one = cut_patch(sample, r["x"], r["y"], config)
        assert {k: v for k, v in one.items() if k not in ("mpp", "slide_mpp")} == \
            {k: v for k, v in r.items() if k not in ("mpp", "slide_mpp")}


# ---------------------------------------------------------------- hand-made cases

def test_fill_polygons_takes_pixel_centres_inside():
    from skimage.draw import polygon as sk_polygon

    rng = np.random.default_rng(1)
    rings, ref = [], np.zeros((64, 80), np.int32)
    for j in range(25):  # star-shaped (non-convex) rings, some running off the canvas
        c, th = rng.uniform(-5, 85, 2), np.sort(rng.uniform(0, 2 * np.pi, 11))
        rad = rng.uniform(2, 12) * rng.uniform(0.5, 1.2, 11)
        rings.append(np.c_[c[0] + rad * np.cos(th), c[1] + rad * np.sin(th)])
        rr, cc = sk_polygon(rings[-1][:, 1], rings[-1][:, 0], ref.shape)
        ref[rr, cc] = j + 1  # later over earlier
    assert np.array_equal(fill_polygons(rings, ref.shape), ref)
    assert not fill_polygons([], (4, 4)).any()


def _fill_polygons_numpy(rings, shape):
    """The vectorised numpy scanline fill the compiled kernel replaced (reference for the test below)."""
    H, W = shape
    out = np.zeros(H * W, np.int32)
    if not len(rings):
        return out.reshape(H, W)
    lens = np.fromiter((len(r) for r in rings), np.int64, len(rings))
    pts = np.concatenate(rings).astype(np.float64)
    start = np.cumsum(lens) - lens
    nxt = np.arange(len(pts)) + 1
    nxt[start + lens - 1] = start
    x0, y0, x1, y1 = pts[:, 0], pts[:, 1], pts[nxt, 0], pts[nxt, 1]
    r0 = np.clip(np.ceil(np.minimum(y0, y1)), 0, H).astype(np.int64)
    r1 = np.clip(np.ceil(np.maximum(y0, y1)), 0, H).astype(np.int64)
    n = np.maximum(r1 - r0, 0)
    e = np.repeat(np.arange(len(pts)), n)
    rows = np.arange(len(e)) - np.repeat(np.cumsum(n) - n, n) + r0[e]
    xs = x0[e] + (rows - y0[e]) * (x1[e] - x0[e]) / (y1[e] - y0[e])
    ring = np.repeat(np.arange(len(rings)), lens)[e]
    order = np.lexsort((xs, rows, ring))
    xs, rows, ring = xs[order], rows[order], ring[order]
    c0 = np.clip(np.ceil(xs[0::2]), 0, W).astype(np.int64)
    c1 = np.clip(np.ceil(xs[1::2]), 0, W).astype(np.int64)
    L = np.maximum(c1 - c0, 0)
    span = np.repeat(np.arange(len(L)), L)
    cols = np.arange(len(span)) - np.repeat(np.cumsum(L) - L, L) + c0[span]
    np.maximum.at(out, rows[0::2][span] * W + cols, (ring[0::2][span] + 1).astype(np.int32))
    return out.reshape(H, W)


def _fill_by_crossing_parity(rings, shape):
    """Independent reference: a pixel centre (c, r) is inside a ring when an odd number of its
    edges cross row r (``min(y0, y1) <= r < max(y0, y1)``) at x <= c; later rings win."""
    H, W = shape
    out = np.zeros(shape, np.int32)
    cols = np.arange(W)
    for j, ring in enumerate(rings):
        inside = np.zeros(shape, bool)
        for (x0, y0), (x1, y1) in zip(ring, np.roll(ring, -1, 0)):
            for r in range(H):
                if min(y0, y1) <= r < max(y0, y1):
                    inside[r] ^= cols >= x0 + (r - y0) * (x1 - x0) / (y1 - y0)
        out[inside] = j + 1
    return out


def test_fill_polygons_equals_the_numpy_scanline_fill_and_crossing_parity():
    """The compiled fill gives the label map of the numpy fill it replaced, and of a per-pixel
    crossing-parity test, pixel for pixel, on random rings: convex and concave (stars),
    self-intersecting, overlapping and touching ones, ones crossing or lying outside the map,
    vertices on pixel centres and half-pixels (ties of the half-open rule), horizontal and
    vertical edges, closed rings (first point repeated) as the cutter passes them."""
    rng = np.random.default_rng(7)
    H, W = 48, 56
    for trial in range(60):
        rings = []
        for _ in range(int(rng.integers(1, 30))):
            kind = rng.integers(0, 5)
            c = rng.uniform(-10, [W + 10, H + 10])
            if kind == 0:      # star (concave), some running off the map
                th = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 16))))
                r = rng.uniform(1, 15) * rng.uniform(0.4, 1.2, len(th))
                ring = np.c_[c[0] + r * np.cos(th), c[1] + r * np.sin(th)]
            elif kind == 1:    # random vertices: self-intersecting
                ring = c + rng.uniform(-12, 12, (int(rng.integers(3, 9)), 2))
            elif kind == 2:    # integer / half-integer vertices: pixel centres and pixel edges
                ring = np.round((c + rng.uniform(-10, 10, (int(rng.integers(3, 8)), 2))) * 2) / 2
            elif kind == 3:    # axis-aligned box sharing an edge with the previous box
                w, h = rng.integers(1, 12, 2)
                ring = np.array([[0, 0], [w, 0], [w, h], [0, h]], float) + np.round(c)
                if rings and trial % 2:
                    prev = rings[-1]
                    ring = ring - ring.min(0) + [prev[:, 0].max(), prev[:, 1].min()]
            else:              # a closed shapely ring (first point repeated), as the cutter passes
                ring = shapely.get_coordinates(shapely.buffer(shapely.points(c), rng.uniform(0.3, 9),
                                                              quad_segs=int(rng.integers(1, 8))).exterior)
            rings.append(ring)
        got = fill_polygons(rings, (H, W))
        assert got.dtype == np.int32 and np.array_equal(got, _fill_polygons_numpy(rings, (H, W))), trial
        if trial % 4 == 0:
            assert np.array_equal(got, _fill_by_crossing_parity(rings, (H, W))), trial
    assert not fill_polygons([], (4, 4)).any()
    assert fill_polygons([np.zeros((1, 2)), np.array([[1.0, 1.0], [3.0, 1.0]])], (4, 4)).sum() == 0


def test_touches_border_overlap_and_order(tmp_path):
    polys = [
        _discs([(100, 100)], 20)[0],   # c0: inside the window
        _discs([(250, 100)], 20)[0],   # c1: crosses the right edge (window spans -0.5..255.5)
        _discs([(300, 100)], 20)[0],   # c2: outside
        _discs([(100, 200)], 10)[0],   # c3: wholly covered by c4, drawn later -> dropped
        _discs([(100, 200)], 20)[0],   # c4
        _discs([(128, 4)], 10)[0],     # c5: crosses the top edge
    ]
    s = _hand_slide(tmp_path, "HAND", 1024, polys, size=(512, 512))
    rec = cut_patch(s, 0, 0, PatchConfig())
    assert rec["cell_ids"] == ["c0", "c1", "c4", "c5"]
    assert rec["touches_border"] == [False, True, False, True]
    m = decode_instance_map(rec["instance_map"])
    assert np.array_equal(np.unique(m), np.arange(5))
    assert (m == 1).sum() == pytest.approx(np.pi * 400, rel=0.05)
    assert (m == 3).sum() == pytest.approx(np.pi * 400, rel=0.05)    # c4 whole, drawn over c3
    visible = polys[1].intersection(shapely.box(-0.5, -0.5, 255.5, 255.5)).area
    assert (m == 2).sum() == pytest.approx(visible, rel=0.05) and visible < 0.9 * polys[1].area  # c1 as seen
    assert (m[:, 250] == 2).any() and m[100, 255] == 2                           # labelled up to the edge
    assert rec["tissue_fraction"] == pytest.approx(1.0)
    assert cut_patch(s, 0, 0, PatchConfig(min_nuclei=5)) is None
    assert cut_patch(s, 256, 256, PatchConfig()) is None  # no nuclei there


def test_resampling_hand_made(tmp_path):
    # 0.125 um/px slide, 0.25 um/px patches: 512 level-0 px -> 256 px, areas / 4
    s = _hand_slide(tmp_path, "FINE", 2048, [_discs([(200, 200)], 40)[0]], mpp=0.125, size=(1024, 1024))
    rec = cut_patch(s, 0, 0, PatchConfig())
    assert rec["width_l0"] == 512 and rec["mpp"] == pytest.approx(0.25)
    m = decode_instance_map(rec["instance_map"])
    assert (m == 1).sum() == pytest.approx(np.pi * 40 ** 2 / 4, rel=0.05)
    ys, xs = np.nonzero(m == 1)
    assert (xs.mean(), ys.mean()) == pytest.approx((99.75, 99.75), abs=0.3)  # (200 + 0.5) / 2 - 0.5


@pytest.mark.parametrize("fmt", ["png", "jpeg", "qoi"])
def test_image_format_is_a_config_choice_recorded_in_the_shard(grid_slide, fmt):
    config = PatchConfig(image_format=fmt, jpeg_quality=90)
    tables = list(patches_for_sample(grid_slide, config))
    rows = _rows(tables)
    assert rows and {r["image_format"] for r in rows} == {fmt}
    assert config_from_schema(tables[0].schema) == config
    sig = {"png": b"\x89PNG", "jpeg": b"\xff\xd8\xff", "qoi": b"qoif"}[fmt]
    lossless = list(patches_for_sample(grid_slide, PatchConfig()))[0].to_pylist()[0]
    assert rows[0]["image"].startswith(sig) and rows[0]["patch_id"] == lossless["patch_id"]
    diff = np.abs(decode_image(rows[0]["image"]).astype(int) - decode_image(lossless["image"]))
    assert diff.max() == 0 if fmt != "jpeg" else 0 < diff.max() and diff.mean() < 2
    assert np.array_equal(decode_instance_map(rows[0]["instance_map"]), decode_instance_map(lossless["instance_map"]))


def test_plan_skips_glass_and_respects_stride(grid_slide):
    o = plan_patches(grid_slide, PatchConfig())
    assert sorted(map(tuple, o.tolist())) == [(x, y) for x in (0, 256) for y in (0, 256, 512)]
    o = plan_patches(grid_slide, PatchConfig(stride=128))   # overlap 128; x=384 is half tissue
    xs, ys = sorted(set(o[:, 0].tolist())), sorted(set(o[:, 1].tolist()))
    assert xs == [0, 128, 256, 384] and ys == [0, 128, 256, 384, 512]
    assert len(o) == 20 and (o % 128 == 0).all()
    assert plan_patches(grid_slide, PatchConfig(stride=128, min_tissue=0.6))[:, 0].max() == 256
    assert plan_patches(grid_slide, PatchConfig(stride=128, min_tissue=0.0)).shape == (7 * 5, 2)


def test_all_glass_slide_gives_no_patches(tmp_path):
    xy = np.stack(np.meshgrid(np.arange(32, 1024, 64), np.arange(32, 768, 64)), -1).reshape(-1, 2)
    s = _hand_slide(tmp_path, "GLASS", None, _discs(xy, 8))
    assert plan_patches(s, PatchConfig(stride=64)).shape == (0, 2)
    assert list(patches_for_sample(s, PatchConfig())) == []
