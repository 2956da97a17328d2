"""Reader for a raw 10x Xenium output bundle with its post-run H&E (local, file:// or s3://).

Files, as 10x documents them (Xenium Onboard Analysis "Understanding outputs"; the
"Image alignment" article for the H&E) and as scverse/spatialdata-io and mahmoodlab/HEST read
them:

- ``experiment.xenium`` (JSON): ``pixel_size`` um per morphology pixel (0.2125);
  ``panel_tissue_type`` gives the organ when present;
- ``cell_feature_matrix.h5``: CSC features x cells; ``features/feature_type`` separates
  "Gene Expression" from the controls ("Negative Control Probe", "Negative Control Codeword",
  "Blank Codeword" / "Unassigned Codeword", "Deprecated Codeword", "Genomic Control");
  counts are of qv >= 20 transcripts; barcodes are the cell ids;
- ``cells.parquet``: must list the same cells as the matrix;
- ``nucleus_boundaries.parquet``: ``cell_id``, ``vertex_x``, ``vertex_y`` in um, one row per
  vertex, a polygon's rows contiguous (``label_id`` from XOA 2.0 separates several nuclei of
  one cell; the largest is kept);
- ``*he_image.ome.tif`` and ``*he_imagealignment.csv``: a headerless 3 x 3 affine from H&E pixels
  to morphology pixels; nuclei are placed on the H&E with its inverse, and the H&E pixel size
  is ``pixel_size * sqrt(|det A|)`` of its linear part.
Cell ids are int (XOA < 1.3), bytes (1.3-1.x) or str (2.0+); all are normalised to str.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse as sp
import shapely

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.organs import experiment_organ
from stx_platform.sources.annotations import read_ground_truth
from stx_platform.sources.cells_only import (
    is_xenium_bundle,
    read_cell_ids,
    read_experiment,
    transcripts_per_cell,
)
from stx_platform.sources.features import as_text, gene_mask, normalise_cell_ids
from stx_platform.sources.sample import (
    Sample,
    align_expression,
    check_counts,
    check_pixel_size,
    check_sample_id,
    folder_sample_id,
    read_input,
    usable_nuclei,
)
from stx_platform.sources.wsi import WSI


def list_xenium_bundles(root: str) -> list[str]:
    """Xenium output folders directly under ``root``, as paths relative to it: ``NAME``, or
    ``NAME/outs`` for a Xenium Ranger run folder."""
    out = []
    for n in storage.listdir(root):
        if n.startswith("."):
            continue
        if is_xenium_bundle(storage.join(root, n)):
            out.append(n)
        elif is_xenium_bundle(storage.join(root, n, "outs")):
            out.append(f"{n}/outs")
    return out


def _find(url: str, suffix: str, sid: str, what: str) -> str:
    hits = [n for n in storage.listdir(url) if n.endswith(suffix) and not n.startswith(".")]
    if not hits:
        raise SampleError(sid, f"*{suffix}", f"no {what} in {url}")
    if len(hits) > 1:
        raise SampleError(sid, f"*{suffix}", f"several {what} files in {url}: {hits}; keep one")
    return hits[0]


def read_matrix(url: str, sid: str, rel: str = "cell_feature_matrix.h5") -> tuple[sp.csr_matrix, pd.Index, list[str]]:
    """Genes-only cells x genes raw counts (CSR int32, checked), cell ids and gene names from a 10x
    feature-barcode h5."""
    try:
        with storage.open_file(url) as f, h5py.File(f, "r") as h:
            g = h["matrix"]
            n_feat, n_cells = (int(v) for v in g["shape"][:])
            csc = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_feat, n_cells))
            barcodes = normalise_cell_ids(g["barcodes"][:])
            names = as_text(g["features/name"][:])
            ftype = as_text(g["features/feature_type"][:]) if "feature_type" in g["features"] else None
    except FileNotFoundError:
        raise SampleError(sid, rel, "file not found") from None
    except (OSError, KeyError, ValueError) as e:
        raise SampleError(sid, rel, f"not a 10x feature-barcode matrix ({type(e).__name__}: {e})") from None
    genes = gene_mask(names, feature_type=ftype)
    X = check_counts(csc.T.tocsr()[:, np.flatnonzero(genes)], sid, rel)
    return X, barcodes, [str(n) for n in names[genes]]


def read_boundaries(url: str, sid: str, rel: str) -> tuple[pd.Index, np.ndarray]:
    """Cell ids and polygons (um) from a Xenium vertex table; one polygon per cell (the largest)."""
    t = read_input(url, sid, rel, pq.read_table, "Parquet")
    missing = [c for c in ("cell_id", "vertex_x", "vertex_y") if c not in t.column_names]
    if missing:
        raise SampleError(sid, rel, f"missing column(s) {missing}")
    ids = as_text(t.column("cell_id").to_numpy(zero_copy_only=False))
    key = ids
    if "label_id" in t.column_names:
        key = np.char.add(ids.astype(str), np.char.add("#", t.column("label_id").to_numpy().astype(str)))
    xy = np.stack([t.column("vertex_x").to_numpy(), t.column("vertex_y").to_numpy()], 1).astype(np.float64)
    if not np.isfinite(xy).all():
        raise SampleError(sid, rel, "vertex coordinates contain NaN or infinity")
    # polygons are runs of equal keys
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(key)]))
    counts = np.bincount(run)
    if (counts < 3).any():
        raise SampleError(sid, rel, f"{int((counts < 3).sum())} polygons have fewer than 3 vertices")
    polys = shapely.polygons(shapely.linearrings(xy, indices=run))
    run_ids = pd.Index(ids[starts])
    if not run_ids.is_unique:
        # several nuclei per cell (or non-contiguous rows): keep each cell's largest polygon
        df = pd.DataFrame({"id": run_ids, "area": shapely.area(polys), "i": np.arange(len(polys))})
        best = df.sort_values("area", ascending=False).drop_duplicates("id").sort_values("i")
        run_ids, polys = pd.Index(best["id"].to_numpy()), polys[best["i"].to_numpy()]
    return pd.Index(run_ids, dtype=object), polys


def _find_alignment(url: str, he_rel: str, sid: str) -> str:
    """The H&E alignment matrix: ``*_imagealignment.csv`` (``<image>_imagealignment.csv`` as
    Xenium Explorer names it after the image; several: the one named after ``he_rel``)."""
    hits = sorted(n for n in storage.listdir(url) if n.endswith("imagealignment.csv") and not n.startswith("."))
    if len(hits) > 1:
        stem = posixpath.basename(he_rel).split(".", 1)[0]
        named = [n for n in hits if n.startswith(stem.removesuffix("_image").removesuffix("image"))]
        hits = named if len(named) == 1 else hits
    if len(hits) != 1:
        raise SampleError(sid, "*_imagealignment.csv", f"{'no' if not hits else 'several'} H&E alignment file(s) in "
                                                        f"{url}{': ' + ', '.join(hits) if hits else ''}")
    return hits[0]


def read_alignment(url: str, sid: str, rel: str) -> np.ndarray:
    try:
        raw = storage.read_bytes(url).decode("utf-8")
    except FileNotFoundError:
        raise SampleError(sid, rel, "file not found") from None
    except UnicodeDecodeError as e:
        raise SampleError(sid, rel, f"not a 3 x 3 numeric matrix ({e})") from None
    if "fixedx" in raw[:200].lower().replace(" ", ""):
        raise SampleError(sid, rel, "a Xenium Explorer keypoints file (fixedX, fixedY, alignmentX, alignmentY), "
                                    "not the 3 x 3 alignment matrix; use the matrix Xenium Explorer exports "
                                    "with it (a headerless 3 x 3 CSV)")
    try:
        m = np.array([[float(v) for v in line.replace(";", ",").split(",") if v.strip()]
                      for line in raw.strip().splitlines() if line.strip()])
    except ValueError as e:
        raise SampleError(sid, rel, f"not a 3 x 3 numeric matrix ({e})") from None
    if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m[:2, :2])) < 1e-12:
        raise SampleError(sid, rel, f"expected an invertible 3 x 3 affine matrix, got shape {m.shape}")
    return m


@dataclass
class HEImage:
    """A bundle's registered H&E: the image, its um per pixel, the H&E -> morphology pixel affine
    and the morphology pixel size it maps to."""

    wsi: WSI
    mpp: float
    alignment: np.ndarray
    morphology_mpp: float


def open_he_image(url: str, sid: str, exp: dict | None = None, he_image: str | None = None,
                  alignment: str | None = None) -> HEImage:
    """The H&E of a Xenium bundle (found in it unless given) and its pixel size from the alignment."""
    exp = read_experiment(url, sid) if exp is None else exp
    px_um = check_pixel_size(exp.get("pixel_size"), sid, "experiment.xenium", "pixel_size")
    he_rel = he_image or _find(url, "he_image.ome.tif", sid, "H&E image (*he_image.ome.tif; patches need the "
                                                             "post-run H&E, `stx label` labels without it)")
    al_rel = alignment or _find_alignment(url, he_rel, sid)
    m = read_alignment(_in_bundle(url, al_rel), sid, al_rel)
    mpp = px_um * float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
    return HEImage(WSI(_in_bundle(url, he_rel), sid, he_rel), mpp, m, px_um)


def _in_bundle(url: str, name: str) -> str:
    """A file named inside the bundle, or given by its own path or URL (``--he-image``)."""
    return name if "://" in name or name.startswith("/") else storage.join(url, name)


def read_xenium_bundle(url: str, sample_id: str | None = None, organ: str | None = None,
                       he_image: str | None = None, alignment: str | None = None,
                       annotations: str | None = None, assignment: str = "cell") -> Sample:
    """Read a Xenium bundle folder; the H&E and alignment are found in it unless given.
    ``assignment``: "cell" counts the whole cell (``cell_feature_matrix.h5``), "nucleus" only the
    transcripts over its nucleus (``transcripts.parquet``, as the HEST reader's nucleus mode)."""
    if assignment not in ("cell", "nucleus"):
        raise ValueError(f"assignment must be 'cell' or 'nucleus', not {assignment!r}")
    url = url.rstrip("/")
    sid = check_sample_id(sample_id or folder_sample_id(url), url)
    exp = read_experiment(url, sid)

    cids = read_cell_ids(url, sid)
    if assignment == "nucleus" and cids is not None:   # the cells are listed: no need for the matrix
        barcodes = cids
    else:
        X, barcodes, genes = read_matrix(storage.join(url, "cell_feature_matrix.h5"), sid)
        if cids is not None and (len(cids) != len(barcodes) or not cids.isin(barcodes).all()):
            raise SampleError(sid, "cells.parquet", f"lists {len(cids)} cells, cell_feature_matrix.h5 has "
                                                    f"{len(barcodes)}; the two disagree")
    counted = {"expression_from": "cell_feature_matrix.h5"}
    if assignment == "nucleus":
        X, genes, counted = transcripts_per_cell(url, sid, barcodes, mode="nucleus")

    he = open_he_image(url, sid, exp, he_image, alignment)
    wsi, mpp, m, px_um = he.wsi, he.mpp, he.alignment, he.morphology_mpp
    width, height = wsi.width, wsi.height

    nb_rel = "nucleus_boundaries.parquet"
    nids, polys_um = read_boundaries(storage.join(url, nb_rel), sid, nb_rel)
    inv = np.linalg.inv(m)
    to_he = lambda c: (np.c_[c / px_um, np.ones(len(c))] @ inv.T)[:, :2]  # noqa: E731
    nuclei = shapely.transform(polys_um, to_he)
    nuclei, nids, dropped = usable_nuclei(nuclei, nids, width, height, sid, nb_rel)
    adata, extra = align_expression(X, barcodes, genes, nids, sid, counted["expression_from"])
    truth_url = annotations or storage.join(url, f"{sid}_annotation.csv")
    truth = read_ground_truth(truth_url, sid)
    meta = {k: exp.get(k) for k in ("analysis_sw_version", "panel_name", "panel_tissue_type", "run_name",
                                    "region_name", "pixel_size", "num_cells")}
    organ = organ or experiment_organ(exp) or "unknown"
    return Sample(sample_id=sid, organ=str(organ), mpp=mpp, wsi=wsi, nuclei=nuclei, expression=adata, metadata=meta,
                  source=url, technology="Xenium", ground_truth=truth,
                  provenance={**counted, **extra, **dropped})
