"""The in-memory sample both slide readers return, and the checks every reader applies.

A ``Sample`` is one tissue section: its H&E (read lazily by region), the nucleus polygons in
level-0 H&E pixels, one expression vector per nucleus (raw counts, genes only), the pixel size
and organ, and the ground truth when the sample carries one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import shapely

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.sources.wsi import WSI

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class Sample:
    sample_id: str
    organ: str
    mpp: float                       # um per level-0 pixel of the H&E
    wsi: WSI
    nuclei: np.ndarray               # shapely Polygons, level-0 H&E pixels, aligned with expression rows
    expression: ad.AnnData           # cells x genes, raw counts (CSR int32), obs_names = cell ids (str)
    metadata: dict
    source: str
    technology: str = "Xenium"
    ground_truth: pd.DataFrame | None = None   # index cell id; columns fine_label, class
    provenance: dict = field(default_factory=dict)  # how expression was built, what was dropped

    @property
    def cell_ids(self) -> pd.Index:
        return self.expression.obs_names

    @property
    def n_cells(self) -> int:
        return self.expression.n_obs

    def nucleus_table(self):
        """Nuclei as a GeoDataFrame indexed by cell id."""
        import geopandas as gpd

        return gpd.GeoDataFrame(geometry=self.nuclei, index=self.cell_ids)

    def summary(self) -> dict:
        return {
            "sample": self.sample_id, "organ": self.organ, "technology": self.technology,
            "mpp": self.mpp, "image": f"{self.wsi.width} x {self.wsi.height} px, {self.wsi.level_count} levels",
            "cells": self.n_cells, "genes": self.expression.n_vars,
            "median_counts": float(np.median(np.asarray(self.expression.X.sum(1)).ravel())) if self.n_cells else 0.0,
            "ground_truth": self.ground_truth is not None, **self.provenance,
        }


def read_input(url: str, sample_id: str, file: str, reader, kind: str):
    """``reader(open file)``; a missing or unreadable file is a SampleError naming it."""
    try:
        with storage.open_file(url) as f:
            return reader(f)
    except SampleError:
        raise
    except FileNotFoundError:
        raise SampleError(sample_id, file, "file not found") from None
    except Exception as e:  # noqa: BLE001 - every library's error for a damaged file
        raise SampleError(sample_id, file, f"not a readable {kind} file ({type(e).__name__}: {e})") from None


#: Folder names a tool gives every run's output (Xenium Ranger writes ``<id>/outs/``): the
#: parent folder then names the sample.
GENERIC_FOLDERS = ("outs", "output", "outputs")


def folder_sample_id(url: str) -> str:
    """The sample id of an output folder: its name, or its parent's for a generic name."""
    parts = [p for p in str(url).rstrip("/").split("/") if p]
    name = parts[-1] if parts else ""
    if name.lower() in GENERIC_FOLDERS and len(parts) > 1 and not parts[-2].endswith(":"):
        return parts[-2]
    return name


def check_sample_id(sample_id: str, source: str | None = None) -> str:
    """Reject ids that could escape the dataset folder or break file names."""
    if not isinstance(sample_id, str) or not _SAFE_ID.match(sample_id) or ".." in sample_id:
        raise SampleError(repr(sample_id), source, "unsafe sample id: use letters, digits, '.', '_' or '-' "
                                                   "(no path separators, no '..', at most 128 characters)")
    return sample_id


def check_pixel_size(value, sample_id: str, file: str, key: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not math.isfinite(v) or v <= 0 or v > 100:
        raise SampleError(sample_id, file, f"unknown pixel size: {key} is {value!r}, expected a positive number of "
                                           "micrometres per pixel")
    return v


def largest_polygon(geom):
    """The largest Polygon in a geometry (itself for a Polygon); None when it has no area."""
    if shapely.get_type_id(geom) == 3:
        return geom if geom.area > 0 else None
    parts = [g for g in getattr(geom, "geoms", ()) if shapely.get_type_id(g) in (3, 6)]
    parts = [largest_polygon(g) for g in parts]
    parts = [g for g in parts if g is not None]
    return max(parts, key=lambda p: p.area) if parts else None


def valid_polygons(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(polygons, usable mask, number repaired): self-intersecting rings (a boundary traced across itself, or
    several nuclei of one cell drawn as one ring) are made valid by ``shapely.make_valid`` and
    their largest polygon kept; those with no area left are not usable."""
    geoms = np.asarray(geoms, dtype=object).copy()
    ok = np.ones(len(geoms), bool)
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    for i in invalid:
        geoms[i] = largest_polygon(shapely.make_valid(geoms[i]))
        ok[i] = geoms[i] is not None
    return geoms, ok, len(invalid)


def polygons_from_geometry(geoms, sample_id: str, file: str) -> np.ndarray:
    """Plain Polygons from a geometry array: the largest part of a MultiPolygon; errors for the rest."""
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms) == 0:
        raise SampleError(sample_id, file, "no polygons")
    types = shapely.get_type_id(geoms)
    bad = (types != 3) & (types != 6)  # Polygon, MultiPolygon
    empty = shapely.is_empty(geoms) | shapely.is_missing(geoms)
    if bad.any() or empty.any():
        n = int((bad | empty).sum())
        raise SampleError(sample_id, file, f"{n} geometries are empty or not polygons")
    coords = shapely.get_coordinates(geoms)
    if not np.isfinite(coords).all():
        raise SampleError(sample_id, file, "polygon coordinates contain NaN or infinity")
    for i in np.flatnonzero(types == 6):
        geoms[i] = largest_polygon(geoms[i]) or geoms[i].geoms[0]
    return geoms


#: More nuclei than this share off the H&E means a wrong pixel size or alignment, not edge cells.
MAX_OUTSIDE_SHARE = 0.01


def nuclei_on_image(nuclei: np.ndarray, ids: pd.Index, width: int, height: int, sample_id: str, file: str,
                    tolerance: float = 2.0, max_outside: float = MAX_OUTSIDE_SHARE) -> np.ndarray:
    """Mask of the nuclei whose centre lies on the image (within ``tolerance`` px). A few off the
    edge (segmentation beyond the scanned area) are dropped by the caller and counted; more than
    ``max_outside`` of them is an error: the pixel size or the alignment is wrong."""
    c = shapely.get_coordinates(shapely.centroid(nuclei))
    out = (c[:, 0] < -tolerance) | (c[:, 1] < -tolerance) | (c[:, 0] > width + tolerance) | (c[:, 1] > height + tolerance)
    if len(out) and out.mean() > max_outside:
        i = int(np.flatnonzero(out)[0])
        raise SampleError(sample_id, file, f"{int(out.sum())} of {len(out)} nuclei lie outside the "
                                           f"{width} x {height} px H&E image (e.g. cell {ids[i]!s} at "
                                           f"x={c[i, 0]:.0f}, y={c[i, 1]:.0f}; more than {max_outside:.0%} means "
                                           "a wrong pixel size or alignment); polygons must be in level-0 H&E pixels")
    return ~out


def usable_nuclei(nuclei: np.ndarray, ids: pd.Index, width: int, height: int, sample_id: str, file: str
                  ) -> tuple[np.ndarray, pd.Index, dict]:
    """The nuclei a slide can use, with their ids, and what was done to the rest: invalid rings
    repaired (:func:`valid_polygons`), those without area and the few off the image dropped
    (:func:`nuclei_on_image`)."""
    nuclei, usable, repaired = valid_polygons(nuclei)
    on = nuclei_on_image(nuclei[usable], ids[usable], width, height, sample_id, file)
    counts = {"nuclei_off_image": int((~on).sum()), "nuclei_repaired": repaired,
              "nuclei_unusable": int((~usable).sum())}
    return nuclei[usable][on], ids[usable][on], counts


def check_counts(X, sample_id: str, file: str) -> sp.csr_matrix:
    """Raw counts as CSR int32; errors for empty, NaN, negative or non-integer values."""
    try:
        X = sp.csr_matrix(X)
    except (TypeError, ValueError):
        dtype = getattr(X, "dtype", type(X).__name__)
        raise SampleError(sample_id, file, f"expression values are {dtype}, not numeric counts") from None
    if X.dtype.kind not in "biuf":
        raise SampleError(sample_id, file, f"expression values are {X.dtype} ({X.data[:3].tolist()}...), not "
                                           "numeric counts")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise SampleError(sample_id, file, f"empty expression matrix ({X.shape[0]} cells x {X.shape[1]} genes)")
    data = X.data
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise SampleError(sample_id, file, f"{int((~np.isfinite(data)).sum())} expression values are NaN or infinite")
        if (data < 0).any():
            raise SampleError(sample_id, file, f"{int((data < 0).sum())} expression values are negative")
        if not np.allclose(data, np.round(data)):
            raise SampleError(sample_id, file, "expression values are not integer counts (normalised data?); "
                                               "raw transcript counts are needed")
    elif (data < 0).any():
        raise SampleError(sample_id, file, f"{int((data < 0).sum())} expression values are negative")
    if X.nnz == 0 or X.sum() == 0:
        raise SampleError(sample_id, file, "all expression values are zero")
    return X.astype(np.int32, copy=False)   # a copy only when the values are not int32 yet


def _permute_columns(X: sp.csr_matrix, order: np.ndarray, in_place: bool) -> sp.csr_matrix:
    """``X[:, order]`` for a permutation ``order``, in new arrays unless ``in_place``: the column
    indices renumbered, entries left in their order within rows, exactly as scipy's column
    indexing leaves them (so sums over them, and the labels, do not move), without its
    matrix-sized temporaries."""
    X = sp.csr_matrix(X)
    new_col = np.empty(len(order), np.int32)
    new_col[order] = np.arange(len(order), dtype=np.int32)
    indices = new_col[X.indices].astype(X.indices.dtype, copy=False)
    if in_place:
        return sp.csr_matrix((X.data, indices, X.indptr), shape=X.shape)
    return sp.csr_matrix((X.data.copy(), indices, X.indptr.copy()), shape=X.shape)


def align_expression(X: sp.csr_matrix, expr_ids: pd.Index, genes: list[str], nucleus_ids: pd.Index,
                     sample_id: str, file: str) -> tuple[ad.AnnData, dict]:
    """Expression rows in nucleus order, genes in alphabetical order (the same whichever file
    they came from). Every nucleus needs a row; rows without a nucleus are dropped."""
    if not expr_ids.is_unique:
        raise SampleError(sample_id, file, "duplicate cell ids in the expression matrix")
    pos = expr_ids.get_indexer(nucleus_ids)
    missing = int((pos < 0).sum())
    if missing == len(nucleus_ids):
        raise SampleError(sample_id, file, f"cell ids differ between expression and nucleus polygons: none of the "
                                           f"{len(nucleus_ids)} nucleus ids (e.g. {nucleus_ids[0]!r}) is in the "
                                           f"expression (e.g. {expr_ids[0]!r})")
    if missing:
        ex = nucleus_ids[pos < 0][:3].tolist()
        raise SampleError(sample_id, file, f"cell ids differ between expression and nucleus polygons: {missing} of "
                                           f"{len(nucleus_ids)} nuclei have no expression row (e.g. {ex})")
    genes = np.asarray(genes, dtype=object)
    if len(set(genes)) != len(genes):
        raise SampleError(sample_id, file, "duplicate gene names")
    order = np.argsort(genes.astype(str), kind="stable")
    same_rows = len(pos) == X.shape[0] and bool((pos == np.arange(len(pos))).all())
    X = _permute_columns(X if same_rows else X[pos], order, in_place=not same_rows)
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(nucleus_ids, dtype=str)),
                       var=pd.DataFrame(index=pd.Index(genes[order], dtype=str)))
    return adata, {"cells_without_nucleus": int(len(expr_ids) - len(nucleus_ids))}
