"""Whole-slide images: lazy region reads from pyramidal TIFFs, and a streaming pyramid writer.

Reading goes through fsspec and tifffile's zarr view of the tiled image, so only the tiles a
region touches are fetched and decoded (a local file, or ranged GETs on s3://); the image is
never loaded whole. Writing renders and encodes level 0 strip by strip, keeping reduced levels
on disk-backed arrays, in the layout HEST publishes (libvips-style: 256 x 256 tiles, LZW, each
reduced level a further page with NewSubfileType=1).

Tile cache. Patches are cut in raster order with windows that do not align with the 256 px
tiles (301 px windows: each tile row is under two window rows), so a level tiled in the common
layout (one page, RGB(A) interleaved, 8-bit) is read tile by tile through tifffile's decoder and
keeps the last decoded tiles in an LRU keyed by (level, tile row, tile column): each tile is then
decoded once per pass. The cache holds at most ``tile_cache_tiles`` tiles, by default two tile
rows of level 0 plus 16 (``2 * ceil(width / 256) + 16`` tiles of 192 KiB, 256 KiB if RGBA: 80 MB
for a 50,000 px wide slide); a read spanning more than half of it (a tissue-mask strip) bypasses
it, so it never evicts the working set. Other layouts read through the zarr view.

The TIFF resolution tag is not trusted for the pixel size: HEST's files carry a tag 10x off
(HEST issue #106); callers take ``pixel_size_um_estimated`` from the metadata instead.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import cv2
import numpy as np
import tifffile
import zarr

from stx_platform import storage
from stx_platform.errors import SampleError

TILE = 256
_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}


class WSI:
    """A lazily opened pyramidal RGB TIFF at an fsspec URL.

    ``tile_cache_tiles`` bounds the decoded-tile cache (see the module docstring); None sizes it
    to two tile rows of level 0 plus 16, 0 turns it off.
    """

    def __init__(self, url: str, sample_id: str | None = None, file_label: str | None = None,
                 tile_cache_tiles: int | None = None):
        self.url = str(url)
        self.sample_id = sample_id
        self.file_label = file_label or os.path.basename(self.url)
        self.tile_cache_tiles = tile_cache_tiles
        self._fh = None
        self._tif = None
        self._levels: list | None = None
        self._pages: list | None = None
        self._tiles: OrderedDict = OrderedDict()
        self._cap = 0
        self._lock = threading.Lock()  # tile reads from several threads share one cache

    def _err(self, problem: str) -> SampleError:
        return SampleError(self.sample_id, self.file_label, problem)

    def _open(self):
        if self._tif is not None:
            return
        try:
            self._fh = storage.open_file(self.url, "rb")
        except FileNotFoundError:
            raise self._err("file not found") from None
        try:
            tif = tifffile.TiffFile(self._fh)
            series = tif.series[0]
            shape, axes, dtype = series.shape, series.axes, series.dtype
        except Exception as e:  # tifffile raises many types on damaged files
            self.close()
            raise self._err(f"not a readable TIFF ({type(e).__name__}: {e})") from None
        chan = [i for i, a in enumerate(axes) if a in "SC" and shape[i] in (3, 4)]
        extra = [i for i, a in enumerate(axes) if a not in "YX" and i not in chan[:1] and shape[i] != 1]
        if "Y" not in axes or "X" not in axes or not chan or extra or dtype != np.uint8:
            self.close()
            raise self._err(f"expected an 8-bit RGB image, found shape {shape} (axes {axes}) dtype {dtype}")
        # (3, y, x) planar or channels-first OME-TIFFs as well as (y, x, 3): index each level by axis
        self._axes, self._chan = axes, chan[0]
        self._tif = tif
        self._levels = [None] * len(series.levels)
        self._shapes = [(lv.shape[axes.index("Y")], lv.shape[axes.index("X")]) for lv in series.levels]
        self._pages = [self._tiled_page(lv) for lv in series.levels]
        if self.tile_cache_tiles is not None:
            self._cap = max(0, int(self.tile_cache_tiles))
        elif self._pages[0] is not None:
            self._cap = 2 * -(-self._shapes[0][1] // self._pages[0].tilewidth) + 16
        self._tiles.clear()

    def _tiled_page(self, level_series):
        """The level's page when it can be decoded tile by tile (one page, tiled, interleaved 8-bit
        RGB(A), axes YXS); None for other layouts, which read through zarr."""
        pages = level_series.pages
        page = level_series.keyframe if len(pages) == 1 else None
        ok = (page is not None and self._axes == "YXS" and page.is_tiled and page.planarconfig == 1
              and page.imagedepth == 1 and page.tiledepth == 1 and page.dtype == np.uint8
              and page.samplesperpixel in (3, 4) and page.shape[:2] == level_series.shape[:2])
        return page if ok else None

    def _check_level(self, level: int) -> None:
        self._open()
        if not 0 <= level < len(self._levels):
            raise self._err(f"no pyramid level {level} (has {len(self._levels)})")

    def _level(self, level: int):
        self._check_level(level)
        if self._levels[level] is None:
            store = self._tif.series[0].aszarr(level=level)
            self._levels[level] = zarr.open(store, mode="r")
        return self._levels[level]

    @property
    def level_count(self) -> int:
        self._open()
        return len(self._shapes)

    def level_dimensions(self, level: int = 0) -> tuple[int, int]:
        """(width, height) of a level."""
        self._open()
        h, w = self._shapes[level][:2]
        return int(w), int(h)

    @property
    def width(self) -> int:
        return self.level_dimensions(0)[0]

    @property
    def height(self) -> int:
        return self.level_dimensions(0)[1]

    def level_downsample(self, level: int) -> float:
        return self.width / self.level_dimensions(level)[0]

    def caches_tiles(self, level: int = 0) -> bool:
        """Whether reads at ``level`` go through the tile cache (so overlapping reads decode shared
        tiles once, and callers need not batch neighbouring windows into one read)."""
        self._check_level(level)
        return self._pages[level] is not None and self._cap > 0

    def read_region(self, x: int, y: int, w: int, h: int, level: int = 0, fill: int = 255) -> np.ndarray:
        """RGB uint8 (h, w, 3) with top-left (x, y) in that level's pixels; outside the image is ``fill``."""
        self._check_level(level)
        W, H = self.level_dimensions(level)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        inside = (x0, y0, x1, y1) == (x, y, x + w, y + h)
        out = np.empty((h, w, 3), np.uint8) if inside else np.full((h, w, 3), fill, np.uint8)
        if x1 <= x0 or y1 <= y0:
            return out
        if self._pages[level] is not None:
            with self._lock:
                self._read_tiles(level, x0, y0, x1, y1, out[y0 - y:y1 - y, x0 - x:x1 - x])
            return out
        arr = self._level(level)
        idx = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None)
                    if i == self._chan else 0 for i, a in enumerate(self._axes))
        kept = [a for i, a in enumerate(self._axes) if a in "YX" or i == self._chan]
        order = [kept.index("Y"), kept.index("X"), next(k for k, a in enumerate(kept) if a not in "YX")]
        try:
            data = np.asarray(arr[idx]).transpose(order)
        except Exception as e:
            raise self._err(f"cannot decode region x={x0} y={y0} w={x1 - x0} h={y1 - y0} "
                            f"({type(e).__name__}: {e}); the file may be truncated or corrupt") from None
        out[y0 - y:y1 - y, x0 - x:x1 - x] = data[..., :3]
        return out

    def _read_tiles(self, level: int, x0: int, y0: int, x1: int, y1: int, dst: np.ndarray) -> None:
        """Copy level pixels [y0, y1) x [x0, x1) (inside the image) into ``dst`` tile by tile, from
        the cache or decoded once (then cached when the read spans at most half the cache)."""
        page = self._pages[level]
        th, tw = page.tilelength, page.tilewidth
        across = -(-self._shapes[level][1] // tw)
        use_cache = 0 < (((y1 - 1) // th - y0 // th + 1) * ((x1 - 1) // tw - x0 // tw + 1)) <= self._cap // 2
        missing = []
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._tiles.get((level, ty, tx)) if use_cache else None
                if tile is None:
                    missing.append(ty * across + tx)
                else:
                    self._tiles.move_to_end((level, ty, tx))
                    self._paste(tile, ty * th, tx * tw, x0, y0, x1, y1, dst)
        if not missing:
            return
        args = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader} \
            if page.compression in _JPEG_COMPRESSIONS else {}
        fh = self._tif.filehandle
        try:
            for data, i in fh.read_segments([page.dataoffsets[i] for i in missing],
                                            [page.databytecounts[i] for i in missing], missing, sort=True):
                if data is None or not len(data):
                    tile = np.zeros((th, tw, 3), np.uint8)  # an empty tile reads as 0, as tifffile fills it
                else:
                    seg = page.decode(data, i, **args)[0]
                    tile = seg.reshape(seg.shape[-3:])[..., :3]
                ty, tx = divmod(i, across)
                self._paste(tile, ty * th, tx * tw, x0, y0, x1, y1, dst)
                if use_cache:
                    self._tiles[(level, ty, tx)] = tile
                    if len(self._tiles) > self._cap:
                        self._tiles.popitem(last=False)
        except Exception as e:
            raise self._err(f"cannot decode region x={x0} y={y0} w={x1 - x0} h={y1 - y0} at level {level} "
                            f"({type(e).__name__}: {e}); the file may be truncated or corrupt") from None

    @staticmethod
    def _paste(tile: np.ndarray, ty: int, tx: int, x0: int, y0: int, x1: int, y1: int, dst: np.ndarray) -> None:
        """Copy the part of a tile (top-left at level px (tx, ty)) inside [y0, y1) x [x0, x1) into dst."""
        a, b = max(y0, ty), min(y1, ty + tile.shape[0])
        c, d = max(x0, tx), min(x1, tx + tile.shape[1])
        if a < b and c < d:
            dst[a - y0:b - y0, c - x0:d - x0] = tile[a - ty:b - ty, c - tx:d - tx]

    def thumbnail(self, max_size: int = 1000) -> np.ndarray:
        """Whole image downscaled so its longer side is ``max_size``, from the smallest adequate level."""
        scale = max_size / max(self.width, self.height)
        level = 0
        for lv in range(self.level_count):
            if max(self.level_dimensions(lv)) >= max_size:
                level = lv
        W, H = self.level_dimensions(level)
        img = self.read_region(0, 0, W, H, level)
        size = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
        return cv2.resize(img, size, interpolation=cv2.INTER_AREA)

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        if self._fh is not None:
            self._fh.close()
        self._fh = self._tif = self._levels = self._pages = None
        self._tiles.clear()

    def __getstate__(self):
        return {"url": self.url, "sample_id": self.sample_id, "file_label": self.file_label,
                "tile_cache_tiles": self.tile_cache_tiles}

    def __setstate__(self, state):
        self.__init__(state["url"], state["sample_id"], state["file_label"], state.get("tile_cache_tiles"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"WSI({self.url!r})"


def write_pyramid_tiff(url: str, width: int, height: int, render: Callable[[int, int, int, int], np.ndarray],
                       mpp: float, block: int = 1024, compression: str = "lzw", tag_mpp: float | None = None,
                       progress: Callable[[int, int], None] | None = None, ome: bool = False,
                       workers: int = 1) -> None:
    """Write an RGB pyramidal TIFF whose level 0 is produced by ``render(x, y, w, h)``.

    ``tag_mpp`` is the pixel size written in the resolution tags (defaults to ``mpp``; HEST's
    own files say ``mpp / 10``). Reduced levels halve until the image fits in one tile. With
    ``ome`` the file is an OME-TIFF (OME-XML with the physical pixel size, reduced levels in
    SubIFDs), as H&E images beside Xenium bundles are. ``workers`` threads render the blocks
    of a strip concurrently (``render`` must be a pure function of its box).
    """
    levels = [(width, height)]
    while max(levels[-1]) > TILE:
        w, h = levels[-1]
        levels.append((max(1, math.ceil(w / 2)), max(1, math.ceil(h / 2))))
    tag_mpp = mpp if tag_mpp is None else tag_mpp
    res = 1e4 / tag_mpp  # pixels per centimetre
    big = width * height * 3 * 1.4 > 3.9e9
    with storage.staged_output(url, ".tif") as local, tempfile.TemporaryDirectory(prefix="stx-pyr-") as tmpd, \
            (ThreadPoolExecutor(workers) if workers > 1 else nullcontext()) as pool:
        reduced = [np.lib.format.open_memmap(os.path.join(tmpd, f"l{i}.npy"), "w+", np.uint8, (h, w, 3))
                   for i, (w, h) in enumerate(levels[1:], 1)]
        n_strips = math.ceil(height / block)

        def level0_tiles() -> Iterator[np.ndarray]:
            for si in range(n_strips):
                y0 = si * block
                bh = min(block, height - y0)
                th = math.ceil(bh / TILE) * TILE
                strip = np.full((th, math.ceil(width / TILE) * TILE, 3), 255, np.uint8)
                xs = range(0, width, block)
                box = lambda x0: render(x0, y0, min(block, width - x0), bh)  # noqa: E731,B023
                for x0, arr in zip(xs, pool.map(box, xs) if pool else map(box, xs)):
                    strip[:bh, x0:x0 + arr.shape[1]] = arr
                _reduce_into(strip[:bh, :width], y0, reduced)
                for ty in range(0, th, TILE):
                    for tx in range(0, strip.shape[1], TILE):
                        yield strip[ty:ty + TILE, tx:tx + TILE]
                if progress:
                    progress(si + 1, n_strips)

        with tifffile.TiffWriter(local, bigtiff=big, ome=ome) as tw:
            opts = dict(tile=(TILE, TILE), compression=compression, photometric="rgb",
                        resolution=(res, res), resolutionunit="CENTIMETER", metadata=None)
            first = dict(opts)
            if ome:
                first.update(subifds=len(reduced), metadata={
                    "axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                    "PhysicalSizeXUnit": "\u00b5m", "PhysicalSizeYUnit": "\u00b5m"})
            tw.write(level0_tiles(), shape=(height, width, 3), dtype=np.uint8, maxworkers=workers, **first)
            for i, arr in enumerate(reduced, 1):
                r = res / (2 ** i)
                tw.write(arr, subfiletype=1, **{**opts, "resolution": (r, r)})
        reduced.clear()  # release the memmaps before the folder goes


def _reduce_into(strip: np.ndarray, y0: int, reduced: list[np.ndarray]) -> None:
    """Downsample a level-0 strip (rows y0..) into each reduced level by successive 2x area means."""
    cur, cy = strip, y0
    for arr in reduced:
        h2 = math.ceil(cur.shape[0] / 2)
        y2 = cy // 2
        h2 = min(h2, arr.shape[0] - y2)
        if h2 <= 0:
            return
        w2 = arr.shape[1]
        small = cv2.resize(cur, (w2, math.ceil(cur.shape[0] / 2)), interpolation=cv2.INTER_AREA)
        arr[y2:y2 + h2] = small[:h2]
        cur, cy = small[:h2], y2
