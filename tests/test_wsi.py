"""Pyramidal TIFF writing and lazy region reads."""

import numpy as np
import pytest
import tifffile

from stx_platform.errors import SampleError
from stx_platform.sources.wsi import WSI, write_pyramid_tiff


def _pattern(x, y, w, h):
    yy, xx = np.mgrid[y:y + h, x:x + w]
    return np.stack([(xx * 7) % 251, (yy * 5) % 241, (xx + yy) % 239], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def tiff(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("wsi") / "s.tif")
    write_pyramid_tiff(path, 1300, 700, _pattern, mpp=0.25, block=512, tag_mpp=0.025)
    return path


def test_pyramid_layout_matches_hest(tiff):
    with tifffile.TiffFile(tiff) as t:
        levels = t.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(700, 1300), (350, 650), (175, 325), (88, 163)]  # to one tile
        page = t.pages[0]
        assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
        assert page.compression == tifffile.COMPRESSION.LZW
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        x = page.tags["XResolution"].value
        assert abs(1e4 / (x[0] / x[1]) - 0.025) < 1e-6  # tag written as asked (HEST's is 10x off)


def test_region_reads_are_exact_and_bounded(tiff):
    with WSI(tiff) as w:
        assert (w.width, w.height, w.level_count) == (1300, 700, 4)
        assert np.array_equal(w.read_region(300, 200, 400, 300), _pattern(300, 200, 400, 300))
        edge = w.read_region(1200, 650, 200, 100)  # runs off the image: filled white
        assert np.array_equal(edge[:50, :100], _pattern(1200, 650, 100, 50))
        assert (edge[50:] == 255).all() and (edge[:, 100:] == 255).all()
        assert (w.read_region(5000, 5000, 10, 10) == 255).all()
        low = w.read_region(0, 0, 650, 350, level=1)
        assert np.abs(low.astype(int) - _pattern(0, 0, 1300, 700)[::2, ::2].astype(int)).mean() < 60
        assert w.thumbnail(200).shape == (108, 200, 3)


def test_tile_cache_reads_the_same_pixels_and_decodes_each_tile_once(tiff, monkeypatch):
    """Windows across tile and image borders, at every level, with a cache small enough to evict:
    the same pixels as the whole level read by tifffile (fill outside); raster-order 301 px
    windows decode each tile once."""
    decoded = []
    read_segments = tifffile.FileHandle.read_segments

    def counting(self, offsets, bytecounts, indices=None, *a, **k):
        decoded.extend(indices if indices is not None else [])
        return read_segments(self, offsets, bytecounts, indices, *a, **k)

    monkeypatch.setattr(tifffile.FileHandle, "read_segments", counting)
    rng = np.random.default_rng(0)
    for cap in (None, 8, 0):
        with WSI(tiff, tile_cache_tiles=cap) as w:
            assert w.caches_tiles(0) == (cap != 0)
            for level in range(w.level_count):
                full = tifffile.imread(tiff, level=level)
                H, W = full.shape[:2]
                p = 1000  # margin beyond any box below
                padded = np.full((H + 2 * p, W + 2 * p, 3), 7, np.uint8)
                padded[p:p + H, p:p + W] = full
                boxes = [(250, 250, 20, 20), (255, 0, 2, 700), (-30, -20, 301, 301), (W - 100, H - 50, 301, 301)]
                boxes += [(int(rng.integers(-300, W)), int(rng.integers(-300, H)), int(rng.integers(1, 600)),
                           int(rng.integers(1, 600))) for _ in range(40)]
                for x, y, bw, bh in boxes:
                    got = w.read_region(x, y, bw, bh, level, fill=7)
                    assert np.array_equal(got, padded[p + y:p + y + bh, p + x:p + x + bw]), (cap, level, x, y)
    with WSI(tiff) as w:
        decoded.clear()
        for y in range(0, 700 - 301 + 1, 301):
            for x in range(0, 1300 - 301 + 1, 301):
                w.read_region(x, y, 301, 301)
        # windows span level px 0..601 x 0..1203: tile rows 0..2, columns 0..4 of 6, each decoded once
        assert sorted(decoded) == [ty * 6 + tx for ty in range(3) for tx in range(5)]


def test_wsi_pickles_without_its_file_handle(tiff):
    import cloudpickle  # what Ray uses to ship objects to workers

    w = WSI(tiff, "S1")
    w.read_region(0, 0, 8, 8)
    w2 = cloudpickle.loads(cloudpickle.dumps(w))
    assert np.array_equal(w2.read_region(10, 10, 20, 20), w.read_region(10, 10, 20, 20))


def test_ome_variant_has_subifds(tmp_path):
    path = str(tmp_path / "h.ome.tif")
    write_pyramid_tiff(path, 600, 600, _pattern, mpp=0.3, ome=True)
    with tifffile.TiffFile(path) as t:
        assert t.is_ome and len(t.series[0].levels) == 3
    assert np.array_equal(WSI(path).read_region(100, 100, 50, 50), _pattern(100, 100, 50, 50))


def test_corrupt_and_truncated_tiffs_are_clear_errors(tiff, tmp_path):
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 1000)
    with pytest.raises(SampleError, match=r"sample S1: wsis/x.tif: not a readable TIFF"):
        WSI(str(bad), "S1", "wsis/x.tif").width
    cut = tmp_path / "cut.tif"
    cut.write_bytes(open(tiff, "rb").read()[:40_000])
    with pytest.raises(SampleError, match=r"cut.tif: (not a readable TIFF|cannot decode region)"):
        w = WSI(str(cut), "S1")
        w.read_region(0, 0, 1300, 700)
    with pytest.raises(SampleError, match="file not found"):
        WSI(str(tmp_path / "nope.tif"), "S1").width


def test_threaded_rendering_writes_the_same_image(tmp_path, tiff):
    path = str(tmp_path / "t.tif")
    write_pyramid_tiff(path, 1300, 700, _pattern, mpp=0.25, block=512, tag_mpp=0.025, workers=2)
    with tifffile.TiffFile(path) as a, tifffile.TiffFile(tiff) as b:
        for la, lb in zip(a.series[0].levels, b.series[0].levels):
            assert np.array_equal(la.asarray(), lb.asarray())


@pytest.mark.parametrize("layout", ["SYX", "CYX", "ZYXS", "YXS"])
def test_h_and_e_ome_tiffs_in_any_channel_layout_read_the_same(tmp_path, layout):
    """Scanners and converters write RGB as (y, x, 3), planar (3, y, x) or with a leading
    singleton axis; each reads to the same (h, w, 3) regions."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    path = tmp_path / f"{layout}.ome.tif"
    if layout in ("SYX", "CYX"):
        tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), ome=True, tile=(16, 16), metadata={"axes": layout},
                         photometric="rgb" if layout == "SYX" else "minisblack",
                         **({"planarconfig": "separate"} if layout == "SYX" else {}))
    else:
        tifffile.imwrite(path, rgb[None] if layout == "ZYXS" else rgb, ome=True, tile=(16, 16), photometric="rgb",
                         metadata={"axes": layout})
    w = WSI(str(path))
    assert (w.width, w.height) == (90, 70)
    assert np.array_equal(w.read_region(5, 7, 40, 30), rgb[7:37, 5:45])
    assert np.array_equal(w.read_region(80, 60, 20, 20)[:10, :10], rgb[60:, 80:])


def test_a_grey_or_two_channel_image_is_not_h_and_e(tmp_path):
    tifffile.imwrite(tmp_path / "grey.tif", np.zeros((2, 40, 50), np.uint8), metadata={"axes": "CYX"})
    with pytest.raises(SampleError, match=r"expected an 8-bit RGB image, found shape \(2, 40, 50\)"):
        WSI(str(tmp_path / "grey.tif")).width
