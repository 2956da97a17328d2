"""Nuclei of an image or a whole slide with a trained model, as a table and as QuPath GeoJSON (``stx predict``).

Tiling (:func:`predict_image`). The image is padded with white to whole tiles of ``tile`` px laid
on a stride of ``tile - overlap``; each tile goes through the model and the HoVer-Net
post-processing on its own, and a nucleus is kept from the tile whose *central region* holds its
centroid: the tile less ``overlap / 2`` on each side shared with a neighbour (a side on the image
border keeps up to the border). Central regions partition the image, so each nucleus is reported
once, and one whose diameter is at most ``overlap`` is seen whole by the tile that keeps it.

Slides (:func:`predict_slide`). Level 0 is read window by window: a core of ``region_size`` model
pixels plus ``overlap`` of context on every side, resampled from the slide's um/px to ``mpp`` as
the patch cutter does (:mod:`stx_platform.patches.cut`), so memory stays bounded whatever the
slide. A window is skipped when the low-resolution tissue mask of the cutter finds no tissue in
it; a nucleus is kept from the window whose core holds its centroid (cores partition the slide).

Coordinates. Tables follow the repository's (OpenCV's) convention: integer coordinates are pixel
centres. Window pixel ``p`` maps to level-0 ``(p + 0.5) * k - 0.5 + origin`` with ``k`` level-0 px
per model px, the inverse of the cutter's mapping. QuPath puts (0, 0) at the top-left *corner*
of the image, so GeoJSON coordinates are table coordinates + 0.5.

GeoJSON follows QuPath's own export (``PathObjectTypeAdapters`` in QuPath >= 0.4): a
FeatureCollection of Features with a UUID ``id``, a Polygon ``geometry`` and ``properties``
``objectType`` "detection", ``classification`` {name, color [r, g, b]} and ``measurements``
{name: number}.

Heavy libraries (torch, pandas, zarr) are imported inside the functions that use them, so
building the ``stx`` parser (which calls :func:`add_predict_parser`) stays fast.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.taxonomy import CLASS_COLOURS, PANNUKE_TYPE_ORDER

if TYPE_CHECKING:
    import argparse

    import pandas as pd
    import torch

    from stx_platform.sources.wsi import WSI

#: um per pixel the models are trained at (PanNuke, 40x).
MODEL_MPP = 0.25
#: Magnification that MODEL_MPP stands for in the post-processing (Sobel kernel size).
MODEL_MAGNIFICATION = 40
#: RGB for nuclei of a class without a colour of its own.
OTHER_COLOUR = (128, 128, 128)
_UNCLASSIFIED = ("", "Background")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


# ---------------------------------------------------------------- images

def tile_origins(length: int, tile: int, overlap: int) -> np.ndarray:
    """Origins of the fewest tiles of ``tile`` px on a stride of ``tile - overlap`` covering ``length`` px."""
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1 if length > tile else 1
    return np.arange(n, dtype=np.int64) * stride


def _central_bounds(origins: np.ndarray, tile: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of each tile's central region along one axis; the outer sides are open."""
    lo = origins + overlap / 2
    hi = origins + tile - overlap / 2
    lo[0], hi[-1] = -np.inf, np.inf
    return lo, hi


def _check_tiling(tile: int, overlap: int) -> None:
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (the model's patch size), got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile) = [0, {tile}), got {overlap}")


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or 0 in rgb.shape:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got shape {rgb.shape} dtype {rgb.dtype}")
    return rgb


def _contours(inst: np.ndarray, ids: Sequence[int]) -> list[np.ndarray]:
    """Outer boundary (n, 2) float64 of x, y at pixel centres of each instance ``id`` of ``inst``."""
    from stx_platform.postprocess import instance_contours

    rings = instance_contours(inst, ids)
    return [rings[int(i)] for i in ids]


def _nucleus_frame(parts: list, class_names: Sequence[str] | None) -> pd.DataFrame:
    """Concatenate per-tile tables into one with ids 1..n; an empty table still has every column."""
    import pandas as pd

    parts = [p for p in parts if len(p)]
    if parts:
        df = pd.concat(parts, ignore_index=True)
    else:
        names = list(class_names) if class_names is not None else list(PANNUKE_TYPE_ORDER)
        df = pd.DataFrame({"id": np.zeros(0, np.int32), "class": np.zeros(0, np.int64), "class_name": [],
                           "x": np.zeros(0), "y": np.zeros(0), "area": np.zeros(0, np.int64),
                           **{f"prob_{c}": np.zeros(0) for c in names}, "contour": []})
    df["id"] = np.arange(1, len(df) + 1, dtype=np.int32)
    return df


def predict_image(model: torch.nn.Module, rgb: np.ndarray, tile: int = 256, overlap: int = 64,
                  batch_size: int = 8, magnification: float = MODEL_MAGNIFICATION,
                  class_names: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None,
                  min_tissue: float = 0.0, amp: bool = True) -> pd.DataFrame:
    """Nuclei of an RGB uint8 image (H, W, 3) of any size, at the model's resolution, in image pixels.

    One row per nucleus: ``id`` (1..n), ``class`` (type-map index), ``class_name``, ``x``, ``y``
    (centroid), ``area`` (px), ``prob_<class>`` (mean class probability over the nucleus) and
    ``contour`` ((n, 2) x, y vertices of its outer boundary). ``class_names``: the model's type-map
    classes (PanNuke order by default). Tiles whose stained-tissue fraction is below ``min_tissue``
    are not run (0: run all). ``progress(done, total)`` is called after each batch of tiles.
    """
    from stx_platform.inference import instances, predict_maps
    from stx_platform.patches.cut import tissue_mask

    rgb = _check_rgb(rgb)
    _check_tiling(tile, overlap)
    H, W = rgb.shape[:2]
    xs, ys = tile_origins(W, tile, overlap), tile_origins(H, tile, overlap)
    (xlo, xhi), (ylo, yhi) = _central_bounds(xs, tile, overlap), _central_bounds(ys, tile, overlap)
    padded = np.full((int(ys[-1]) + tile, int(xs[-1]) + tile, 3), 255, np.uint8)
    padded[:H, :W] = rgb
    cells = [(ix, iy) for iy in range(len(ys)) for ix in range(len(xs))]
    crop = lambda ix, iy: padded[ys[iy]:ys[iy] + tile, xs[ix]:xs[ix] + tile]  # noqa: E731
    if min_tissue > 0:
        cells = [c for c in cells if tissue_mask(crop(*c)).mean() >= min_tissue]
    parts = []
    for start in range(0, len(cells), batch_size):
        chunk = cells[start:start + batch_size]
        maps = predict_maps(model, np.stack([crop(ix, iy) for ix, iy in chunk]), batch_size, amp)
        for j, (ix, iy) in enumerate(chunk):
            inst, table = instances(maps, j, magnification, class_names)
            x, y = table["x"].to_numpy() + xs[ix], table["y"].to_numpy() + ys[iy]
            keep = ((x >= xlo[ix]) & (x < xhi[ix]) & (y >= ylo[iy]) & (y < yhi[iy])
                    & (x >= -0.5) & (x < W - 0.5) & (y >= -0.5) & (y < H - 0.5))  # not in the white padding
            table = table[keep].copy()
            table["x"], table["y"] = x[keep], y[keep]
            table["contour"] = [c + (xs[ix], ys[iy]) for c in _contours(inst, table["id"].tolist())]
            parts.append(table)
        if progress is not None:
            progress(min(start + batch_size, len(cells)), len(cells))
    return _nucleus_frame(parts, class_names)


def _to_level0(df: pd.DataFrame, kx: float, ky: float, ox: float, oy: float) -> pd.DataFrame:
    """Map a table from model pixels of a window at level-0 origin (ox, oy), ``k`` level-0 px per
    model px, to level-0 pixels (areas too)."""
    df = df.copy()
    df["x"] = (df["x"] + 0.5) * kx - 0.5 + ox
    df["y"] = (df["y"] + 0.5) * ky - 0.5 + oy
    df["area"] = df["area"] * (kx * ky)
    df["contour"] = [(c + 0.5) * (kx, ky) - 0.5 + (ox, oy) for c in df["contour"]]
    return df


def predict_image_at(model: torch.nn.Module, rgb: np.ndarray, image_mpp: float | None, mpp: float = MODEL_MPP,
                     **kwargs) -> pd.DataFrame:
    """:func:`predict_image` on an image of ``image_mpp`` um/px: resampled to ``mpp`` (INTER_AREA
    down, INTER_LINEAR up, as the cutter), nuclei mapped back to the image's pixels (area in
    them too). ``image_mpp`` None: the image is taken to be at ``mpp`` already."""
    rgb = _check_rgb(rgb)
    kwargs.setdefault("magnification", MODEL_MAGNIFICATION * MODEL_MPP / mpp)
    if image_mpp is None or math.isclose(image_mpp, mpp, rel_tol=1e-6):
        return predict_image(model, rgb, **kwargs)
    H, W = rgb.shape[:2]
    k = mpp / image_mpp
    size = (max(1, round(W / k)), max(1, round(H / k)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if k > 1 else cv2.INTER_LINEAR)
    return _to_level0(predict_image(model, small, **kwargs), W / size[0], H / size[1], 0, 0)


# ---------------------------------------------------------------- slides

@dataclass
class Slide:
    """A whole-slide image and its pixel size: all :func:`predict_slide` needs (a
    :class:`~stx_platform.sources.Sample` has both too)."""

    wsi: WSI
    mpp: float       # um per level-0 pixel
    name: str


def _tiff_mpp(url: str) -> float | None:
    """um/px from OME-XML ``PhysicalSizeX`` or the TIFF resolution tags of page 0; None when absent."""
    import tifffile

    with storage.open_file(url, "rb") as fh, tifffile.TiffFile(fh) as tif:
        if tif.is_ome and tif.ome_metadata:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
            u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            if m and (u is None or u.group(1) in ("\u00b5m", "um", "\u03bcm")):
                return float(m.group(1))
        tags = tif.pages[0].tags
        res, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        if res is None or unit is None or int(unit.value) not in (2, 3):
            return None
        num, den = res.value
        if not num or not den:
            return None
        return (25400.0 if int(unit.value) == 2 else 10000.0) * den / num


def open_slide(ref: str, slide_mpp: float | None = None) -> Slide:
    """The slide a reference names and its um/px, without reading cells or expression.

    ``ROOT#ID``: a HEST-1k sample (``pixel_size_um_estimated`` from its metadata); a folder with
    ``experiment.xenium``: a Xenium bundle's H&E (pixel size from the alignment); else a pyramidal
    TIFF (OME ``PhysicalSizeX`` or the resolution tag). ``slide_mpp`` overrides the pixel size.
    """
    from stx_platform.sources import sample_id_of
    from stx_platform.sources.hest import open_hest_wsi
    from stx_platform.sources.sample import check_sample_id
    from stx_platform.sources.wsi import WSI
    from stx_platform.sources.xenium import is_xenium_bundle, open_he_image

    ref = str(ref)
    if slide_mpp is not None and not slide_mpp > 0:
        raise ValueError(f"--slide-mpp must be a positive number of um per pixel, got {slide_mpp}")
    if "#" in ref:
        root, sid = ref.rsplit("#", 1)
        check_sample_id(sid, root)
        wsi, mpp = open_hest_wsi(root, sid)
        mpp = slide_mpp or mpp
    elif storage.is_dir(ref) and is_xenium_bundle(ref):
        url, sid = ref.rstrip("/"), sample_id_of(ref)
        he = open_he_image(url, sid)
        wsi, mpp = he.wsi, slide_mpp or he.mpp
    else:
        if storage.is_dir(ref):
            raise ValueError(f"{ref}: a folder but not a Xenium bundle (no experiment.xenium, cell_feature_matrix.h5 "
                             "or cells.parquet); for a HEST-1k sample give ROOT#ID (`stx list ROOT` lists them)")
        if not storage.exists(ref):
            raise FileNotFoundError(f"{ref}: no such slide (expected a pyramidal TIFF, a HEST ROOT#ID reference "
                                    "or a Xenium bundle folder)")
        wsi = WSI(ref)
        _ = wsi.level_count  # opens the header: an unreadable file fails here, naming itself
        mpp = slide_mpp or _tiff_mpp(ref)
        if mpp is None:
            raise SampleError(None, ref, "the TIFF gives no pixel size; pass --slide-mpp (um per level-0 pixel)")
        if not 0.05 <= mpp <= 20:
            raise SampleError(None, ref, f"the TIFF's pixel size, {mpp:.4g} um/px, is implausible for H&E (HEST's tags "
                                         "are 10x off: use its ROOT#ID reference); pass --slide-mpp")
        sid = None
    _ = wsi.level_count
    return Slide(wsi, float(mpp), sid or wsi.file_label)


def _clip_box(region: Sequence[int] | None, W: int, H: int) -> tuple[int, int, int, int]:
    if region is None:
        return 0, 0, W, H
    x, y, w, h = (int(v) for v in region)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"region x={x} y={y} w={w} h={h} does not overlap the {W} x {H} px slide")
    return x0, y0, x1 - x0, y1 - y0


def predict_slide(model: torch.nn.Module, slide, mpp: float = MODEL_MPP, region: Sequence[int] | None = None,
                  tissue_only: bool = True, region_size: int = 1024, tile: int = 256, overlap: int = 64,
                  batch_size: int = 8, class_names: Sequence[str] | None = None, max_regions: int | None = None,
                  min_tissue: float = 0.001, progress: Callable[[str], None] | None = None,
                  amp: bool = True) -> pd.DataFrame:
    """Nuclei of a whole slide (or of ``region`` = (x, y, w, h) in level-0 px) in level-0 pixels.

    ``slide`` has ``.wsi`` (:class:`~stx_platform.sources.wsi.WSI`) and ``.mpp`` (um per level-0
    px): a :class:`Slide` or a Sample. Columns as :func:`predict_image`, ``area`` in level-0 px,
    plus ``area_um2``. With ``tissue_only``, windows and tiles whose stained-tissue fraction is below
    ``min_tissue`` are skipped. ``max_regions`` stops after that many windows (for a quick look).
    ``progress(message)`` is called once per window. ``attrs``: ``box`` (the level-0 box the
    predicted windows' cores cover), ``regions``, ``skipped``, ``mpp``, ``slide_mpp``.
    """
    from stx_platform.patches.cut import (
        MASK_CELLS_PER_PATCH,
        _resample,
        slide_tissue_fraction,
    )

    _check_tiling(tile, overlap)
    if region_size < 16:
        raise ValueError(f"region_size must be at least 16 model px, got {region_size}")
    wsi, slide_mpp = slide.wsi, float(slide.mpp)
    W, H = wsi.width, wsi.height
    bx, by, bw, bh = _clip_box(region, W, H)
    size = region_size + 2 * overlap
    scale = mpp / slide_mpp                                     # level-0 px per model px
    extent = max(1, round(size * scale))
    ctx = round(overlap * scale)
    step = max(1, extent - 2 * ctx)
    k = extent / size
    cores = [(cx, cy) for cy in range(by, by + bh, step) for cx in range(bx, bx + bw, step)]
    skipped = 0
    if tissue_only:
        frac, dsx, dsy = slide_tissue_fraction(wsi, max(1.0, extent / MASK_CELLS_PER_PATCH))

        def tissue(cx: int, cy: int) -> float:
            r0, c0 = max(0, int((cy - ctx) // dsy)), max(0, int((cx - ctx) // dsx))
            r1, c1 = math.ceil((cy - ctx + extent) / dsy), math.ceil((cx - ctx + extent) / dsx)
            return float(frac[r0:r1, c0:c1].sum()) / max(1, (r1 - r0) * (c1 - c0))

        kept = [c for c in cores if tissue(*c) >= min_tissue]
        skipped = len(cores) - len(kept)
        cores = kept
    if max_regions is not None:
        cores = cores[:max(0, max_regions)]
    parts = []
    for n, (cx, cy) in enumerate(cores, 1):
        wx, wy = cx - ctx, cy - ctx
        img = _resample(wsi.read_region(wx, wy, extent, extent), size)
        df = predict_image(model, img, tile, overlap, batch_size, MODEL_MAGNIFICATION * MODEL_MPP / mpp,
                           class_names, min_tissue=min_tissue if tissue_only else 0.0, amp=amp)
        df = _to_level0(df, k, k, wx, wy)
        x1, y1 = min(cx + step, bx + bw), min(cy + step, by + bh)
        core = (df["x"] >= cx - 0.5) & (df["x"] < x1 - 0.5) & (df["y"] >= cy - 0.5) & (df["y"] < y1 - 0.5)
        parts.append(df[core.to_numpy()])
        if progress is not None:
            progress(f"region {n}/{len(cores)} at x={cx} y={cy} ({x1 - cx} x {y1 - cy} px): "
                     f"{int(core.sum())} nuclei")
    out = _nucleus_frame(parts, class_names)
    out["area_um2"] = out["area"].astype(np.float64) * slide_mpp ** 2
    if cores:
        xs, ys = [c[0] for c in cores], [c[1] for c in cores]
        x0, y0 = min(xs), min(ys)
        box = (x0, y0, min(max(xs) + step, bx + bw) - x0, min(max(ys) + step, by + bh) - y0)
    else:
        box = (bx, by, bw, bh)
    out.attrs.update(box=box, regions=len(cores), skipped=skipped, mpp=mpp, slide_mpp=slide_mpp)
    return out


# ---------------------------------------------------------------- GeoJSON

def class_colour(name: str) -> tuple[int, int, int]:
    """RGB of a class as CellViT draws it (grey for a class without a colour)."""
    return tuple(int(v) for v in CLASS_COLOURS.get(str(name), OTHER_COLOUR))


def iter_features(nuclei: pd.DataFrame, class_names: Sequence[str] | None = None,
                  measurements: Sequence[str] = ()) -> Iterator[dict]:
    """One QuPath detection Feature per nucleus (see the module docstring). Measurements: ``area``
    (and ``area_um2``), the ``prob_<class>`` columns (of ``class_names`` when given) and the
    numeric columns named in ``measurements``. Nuclei classed Background (no class had a pixel)
    are left unclassified."""
    probs = ([f"prob_{c}" for c in class_names if f"prob_{c}" in nuclei.columns] if class_names is not None
             else [c for c in nuclei.columns if c.startswith("prob_")])
    names = list(dict.fromkeys([c for c in ("area", "area_um2") if c in nuclei.columns] + probs + list(measurements)))
    values = nuclei[names].to_numpy(np.float64) if len(nuclei) else np.zeros((0, len(names)))
    for contour, cls, vals in zip(nuclei["contour"], nuclei["class_name"].astype(str), values):
        ring = np.round(np.asarray(contour, np.float64) + 0.5, 2)
        ring = np.vstack([ring, ring[:1]]).tolist()
        props = {"objectType": "detection"}
        if cls not in _UNCLASSIFIED:
            props["classification"] = {"name": cls, "color": list(class_colour(cls))}
        props["measurements"] = {k: float(v) for k, v in zip(names, vals) if np.isfinite(v)}
        yield {"type": "Feature", "id": str(uuid.uuid4()), "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": props}


def to_geojson(nuclei: pd.DataFrame, class_names: Sequence[str] | None = None) -> dict:
    """A QuPath-importable GeoJSON FeatureCollection (a dict) of the nuclei of a prediction table."""
    return {"type": "FeatureCollection", "features": list(iter_features(nuclei, class_names))}


def write_geojson(url: str, nuclei: pd.DataFrame, class_names: Sequence[str] | None = None,
                  measurements: Sequence[str] = ()) -> int:
    """Write :func:`to_geojson` to a local path or fsspec URL, feature by feature (a slide's
    million nuclei never sit in memory as one JSON string), committed whole when complete.
    Returns the number of features."""
    n = 0
    with storage.staged_output(url, ".geojson") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for n, feature in enumerate(iter_features(nuclei, class_names, measurements), 1):
            f.write(("\n" if n == 1 else ",\n") + json.dumps(feature, separators=(",", ":")))
        f.write("\n]}\n")
    return n


# ---------------------------------------------------------------- pictures and input files

def overlay(rgb: np.ndarray, nuclei: pd.DataFrame, offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
            classes: Sequence[str] | None = None) -> np.ndarray:
    """``rgb`` with each nucleus outlined in its class colour (contours in source pixels, mapped
    by ``offset`` and ``scale``), and a legend with counts on the right."""
    from stx_platform.viz import hstack, legend, outline_contours

    out = outline_contours(rgb, nuclei["contour"], nuclei["class_name"].astype(str), offset, scale)
    counts = nuclei["class_name"].value_counts().to_dict()
    names = [c for c in (classes or sorted(counts)) if c not in _UNCLASSIFIED]
    return hstack([out, legend(names, counts)])


def _read_box(wsi: WSI, box: tuple[int, int, int, int], max_side: int) -> tuple[np.ndarray, float]:
    """A level-0 box read at most ``max_side`` px on its longer side, from the coarsest adequate
    pyramid level in strips (memory bounded); returns the image and its px per level-0 px."""
    x, y, w, h = box
    scale = min(1.0, max_side / max(w, h))
    level = 0
    for lv in range(wsi.level_count):
        if wsi.level_downsample(lv) <= 1 / scale:
            level = lv
    ds = wsi.level_downsample(level)
    lx, ly, lw, lh = int(x / ds), int(y / ds), max(1, math.ceil(w / ds)), max(1, math.ceil(h / ds))
    f = max(1, int(1 / (scale * ds)))                           # whole-pixel averaging while reading strips
    rows = max(f, (1 << 22) // max(lw, 1) // f * f)
    strips = []
    for sy in range(0, lh, rows):
        strip = wsi.read_region(lx, ly + sy, lw, min(rows, lh - sy), level)
        strips.append(cv2.resize(strip, (max(1, lw // f), max(1, strip.shape[0] // f)), interpolation=cv2.INTER_AREA))
    img = np.concatenate(strips)
    out = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, out, interpolation=cv2.INTER_AREA), out[0] / w


# ---------------------------------------------------------------- command line

def add_predict_parser(sub) -> argparse.ArgumentParser:
    """Add the ``predict`` subcommand to an argparse subparsers object; runs :func:`cmd_predict`."""
    p = sub.add_parser("predict", help="segment and classify nuclei in an image or a whole slide with a trained "
                                       "model; write QuPath GeoJSON")
    p.add_argument("--checkpoint", required=True, help="model.pt, a checkpoint folder or a training run folder "
                                                       "(its newest checkpoint); local or s3://")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="PNG, JPEG or TIFF, read whole (taken to be at --mpp unless --slide-mpp)")
    src.add_argument("--slide", help="pyramidal TIFF, HEST ROOT#ID reference or Xenium bundle folder (read by region)")
    p.add_argument("--out", required=True, help="GeoJSON to write (local or s3://), e.g. nuclei.geojson")
    p.add_argument("--mpp", type=float, default=MODEL_MPP, help="um/px the model works at (default: 0.25, PanNuke 40x)")
    p.add_argument("--slide-mpp", type=float, help="um per pixel of the input (default: from the HEST metadata, "
                                                   "the Xenium alignment or the TIFF tags)")
    p.add_argument("--region", type=int, nargs=4, metavar=("X", "Y", "W", "H"), help="slide box in level-0 px")
    p.add_argument("--tile", type=int, default=256, help="model input side in px (multiple of 16)")
    p.add_argument("--overlap", type=int, default=64, help="px shared by neighbouring tiles; at least the largest "
                                                           "nucleus diameter")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--region-size", type=int, default=1024, help="slide window core side in model px")
    p.add_argument("--all-regions", action="store_true", help="also run windows without tissue")
    p.add_argument("--max-regions", type=int, help="stop after this many slide windows (a quick look)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--overlay", help="also write a PNG of the image (or the predicted slide area, downsampled) "
                                     "with nuclei outlined in class colours")
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args) -> int:
    """Run ``stx predict``: load inputs and model, predict, write the GeoJSON (and overlay), summarise."""
    import torch

    from stx_platform.progress import Progress
    from stx_platform.training.checkpoint import load_trained_model

    t0 = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device available")
    if args.image and args.region:
        raise ValueError("--region applies to --slide; crop the image instead")
    from stx_platform.viz import read_image

    rgb = read_image(args.image) if args.image else None
    slide = open_slide(args.slide, args.slide_mpp) if args.slide else None
    trained = load_trained_model(args.checkpoint, device)
    say = Progress("predict")
    kw = dict(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, class_names=trained.classes)
    print(f"stx predict: {trained.source} (epoch {trained.epoch + 1}) on {device}", flush=True)
    if rgb is not None:
        say(f"{args.image}: {rgb.shape[1]} x {rgb.shape[0]} px")
        nuclei = predict_image_at(trained.model, rgb, args.slide_mpp, args.mpp, progress=say.fraction("tiles"), **kw)
    else:
        say(f"{slide.name}: {slide.wsi.width} x {slide.wsi.height} px at {slide.mpp:.4g} um/px -> {args.mpp} um/px")
        nuclei = predict_slide(trained.model, slide, args.mpp, args.region, not args.all_regions, args.region_size,
                               max_regions=args.max_regions, progress=say, **kw)
        say(f"{nuclei.attrs['regions']} window(s) predicted, {nuclei.attrs['skipped']} without tissue skipped")
    n = write_geojson(args.out, nuclei, trained.classes)
    if args.overlay:
        if rgb is not None:
            s = min(1.0, 4096 / max(rgb.shape[:2]))
            img = rgb if s == 1 else cv2.resize(rgb, (round(rgb.shape[1] * s), round(rgb.shape[0] * s)),
                                                interpolation=cv2.INTER_AREA)
            pic = overlay(img, nuclei, scale=s, classes=trained.classes)
        else:
            box = nuclei.attrs["box"]
            img, s = _read_box(slide.wsi, box, 2048)
            pic = overlay(img, nuclei, offset=box[:2], scale=s, classes=trained.classes)
        from stx_platform.viz import save_png

        save_png(args.overlay, pic)
    counts = nuclei["class_name"].value_counts()
    per_class = ", ".join(f"{c} {int(counts.get(c, 0))}" for c in trained.classes if c in counts) or "none"
    print(f"{n} nuclei ({per_class}) in {time.perf_counter() - t0:.1f} s")
    print(f"wrote {args.out}" + (f" and {args.overlay}" if args.overlay else "")
          + " (QuPath: File > Import objects from file)")
    return 0
