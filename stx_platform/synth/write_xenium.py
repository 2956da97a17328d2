"""Write a synthetic slide as a raw 10x Xenium output bundle, with its post-run H&E.

Files in ``<out>/<id>/`` (10x Xenium Onboard Analysis output documentation; readers in
scverse/spatialdata-io ``readers/xenium.py`` and mahmoodlab/HEST ``readers.py``):

- ``experiment.xenium``: JSON with ``pixel_size`` (0.2125 um per morphology pixel) and
  ``analysis_sw_version`` (``xenium-1.0.2`` / ``xenium-1.3.0.5`` / ``xenium-2.0.0.10`` by style);
- ``cells.parquet``: one row per cell, centroids and areas in um, count summaries;
- ``cell_feature_matrix.h5``: CSC features x cells (``/matrix/{barcodes,data,indices,indptr,shape}``,
  ``/matrix/features/{_all_tag_keys,feature_type,genome,id,name}``), qv >= 20 counts of genes and
  controls, ``feature_type`` naming the controls;
- ``nucleus_boundaries.parquet`` / ``cell_boundaries.parquet``: one row per vertex (``cell_id``,
  ``vertex_x``, ``vertex_y`` in um, closed rings, rows of a polygon contiguous; ``label_id`` from 2.0);
- ``transcripts.parquet``: one row per decoded transcript;
- ``<id>_he_image.ome.tif`` and ``<id>_he_imagealignment.csv``: the H&E and the headerless 3 x 3
  affine mapping H&E pixels to morphology pixels (10x "Image alignment" convention);
- ``<id>_annotation.csv``: ground truth (stx extension, not a 10x file).

``experiment.xenium`` is written last, so a bundle is only recognised once complete.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stx_platform import __version__, storage
from stx_platform.progress import Progress
from stx_platform.sources.expression import cell_by_gene
from stx_platform.sources.features import normalise_cell_ids
from stx_platform.sources.wsi import write_pyramid_tiff
from stx_platform.synth.formats import (
    FormatStyle,
    features,
    transcript_table,
    xenium_cell_ids,
)
from stx_platform.synth.panel import feature_type_of
from stx_platform.synth.slide import XENIUM_MORPHOLOGY_MPP, SyntheticSlide
from stx_platform.synth.transcripts import generate
from stx_platform.taxonomy import LABEL_CLASSES

SOFTWARE = {"v1": "xenium-1.0.2", "bytes": "xenium-1.3.0.5", "modern": "xenium-2.0.0.10"}


def _boundaries(slide: SyntheticSlide, polys_px: list[np.ndarray], ids: np.ndarray, style: FormatStyle) -> pa.Table:
    """Vertex table in Xenium um: each ring closed, rows of one polygon contiguous."""
    rings, owner = [], []
    for i, p in enumerate(polys_px):
        if len(p) < 3:
            continue
        um = p * slide.mpp
        x, y = slide.to_xenium_um(um[:, 0], um[:, 1])
        ring = np.stack([x, y], 1)
        rings.append(np.concatenate([ring, ring[:1]]))
        owner.append(np.full(len(ring) + 1, i))
    xy = np.concatenate(rings).astype(np.float32)
    own = np.concatenate(owner)
    cols = {"cell_id": _id_column(ids[own], style), "vertex_x": pa.array(xy[:, 0]), "vertex_y": pa.array(xy[:, 1])}
    if style.name == "modern":
        cols["label_id"] = pa.array((own + 1).astype(np.int32))
    return pa.table(cols)


def _id_column(ids: np.ndarray, style: FormatStyle) -> pa.Array:
    if style.name == "v1":
        return pa.array(ids.astype(np.int32))
    if style.name == "bytes":
        return pa.array(list(ids), pa.binary())
    return pa.array(list(ids), pa.string())


def _write_parquet(url: str, table: pa.Table) -> None:
    with storage.staged_output(url, ".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _write_h5(url: str, mat, barcodes: list[str], names: list[str]) -> None:
    csc = mat.T.tocsc()  # features x cells, compressed by cell columns (indptr runs over cells)
    csc.sort_indices()
    with storage.staged_output(url, ".h5") as tmp, h5py.File(tmp, "w") as h:
        h.attrs["filetype"] = "matrix"
        h.attrs["version"] = 2
        h.attrs["library_ids"] = np.array([b"stx-synthetic"])
        h.attrs["original_gem_groups"] = np.array([1])
        g = h.create_group("matrix")
        g.create_dataset("barcodes", data=np.array([b.encode() for b in barcodes]))
        g.create_dataset("data", data=csc.data.astype(np.int32), compression="gzip")
        g.create_dataset("indices", data=csc.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(csc.shape, np.int32))
        f = g.create_group("features")
        f.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        f.create_dataset("feature_type", data=np.array([feature_type_of(n).encode() for n in names]))
        f.create_dataset("genome", data=np.array([b"Unknown"] * len(names)))
        f.create_dataset("id", data=np.array([n.encode() for n in names]))
        f.create_dataset("name", data=np.array([n.encode() for n in names]))


def write_xenium_bundle(slide: SyntheticSlide, out: str, style: FormatStyle, progress: Progress | None = None, workers: int = 1) -> dict:
    sid = slide.sample_id
    root = storage.join(out, sid)
    j = lambda *p: storage.join(root, *p)  # noqa: E731
    rng = np.random.default_rng([slide.seed, 99])
    ids = xenium_cell_ids(slide.n_cells, style, offset=slide.seed)
    id_text = [v.decode() if isinstance(v, bytes) else str(v) for v in ids]
    say = progress or Progress(None)

    say(f"rendering H&E {slide.width_px} x {slide.height_px} px")
    renderer = slide.renderer()
    write_pyramid_tiff(j(f"{sid}_he_image.ome.tif"), slide.width_px, slide.height_px, renderer.render, slide.mpp,
                       ome=True, progress=say.fraction("H&E rows"),
                       workers=workers)
    m = slide.he_to_morphology_matrix()
    storage.write_bytes(j(f"{sid}_he_imagealignment.csv"),
                        "\n".join(",".join(repr(float(v)) for v in row) for row in m).encode() + b"\n")

    say("writing transcripts")
    n_tx = 0
    with storage.staged_output(j("transcripts.parquet"), ".parquet") as tmp:
        writer = None
        for chunk in generate(slide, rng, style.controls):
            table = transcript_table(slide, chunk, style, ids, 281_474_976_710_656 + n_tx, hest=False)
            writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            n_tx += table.num_rows
        writer.close()
        cols = ["feature_name", "cell_id", "qv"] + (["is_gene"] if style.name != "v1" else [])
        tx = pq.read_table(tmp, columns=cols, read_dictionary=["feature_name", "cell_id"])
    say(f"{n_tx:,} transcripts; cell-feature matrix, cells and boundaries")
    names = list(features(style))
    cell_index = normalise_cell_ids(ids)
    mat, _, _ = cell_by_gene(tx, cell_index, genes=names, keep_controls=True)
    del tx
    _write_h5(j("cell_feature_matrix.h5"), mat, id_text, names)

    ftype = np.array([feature_type_of(n) for n in names])
    per_type = {t: np.asarray(mat[:, ftype == t].sum(1)).ravel() for t in set(ftype)}
    zeros = np.zeros(slide.n_cells, np.int64)
    nuc_area = np.array([_area(p) for p in slide.nuc_dapi_px]) * slide.mpp ** 2
    cell_area = np.array([_area(p) for p in slide.cell_polys_px]) * slide.mpp ** 2
    cx, cy = slide.to_xenium_um(slide.cells.xy[:, 0], slide.cells.xy[:, 1])
    cells = {
        "cell_id": _id_column(ids, style),
        "x_centroid": pa.array(cx.astype(np.float64)), "y_centroid": pa.array(cy.astype(np.float64)),
        "transcript_counts": pa.array(per_type.get("Gene Expression", zeros).astype(np.int64)),
        "control_probe_counts": pa.array(per_type.get("Negative Control Probe", zeros).astype(np.int64)),
        "control_codeword_counts": pa.array(per_type.get("Negative Control Codeword", zeros).astype(np.int64)),
    }
    unassigned = per_type.get("Unassigned Codeword", per_type.get("Blank Codeword", zeros))
    if style.name != "v1":
        cells["unassigned_codeword_counts"] = pa.array(unassigned.astype(np.int64))
        cells["deprecated_codeword_counts"] = pa.array(zeros)
    cells["total_counts"] = pa.array(np.asarray(mat.sum(1)).ravel().astype(np.int64))
    cells["cell_area"] = pa.array(cell_area)
    cells["nucleus_area"] = pa.array(nuc_area)
    if style.name == "modern":
        cells["nucleus_count"] = pa.array(np.ones(slide.n_cells, np.int64))
        cells["segmentation_method"] = pa.array(["Segmented by nucleus expansion of 5.0\u00b5m"] * slide.n_cells)
    _write_parquet(j("cells.parquet"), pa.table(cells))
    _write_parquet(j("nucleus_boundaries.parquet"), _boundaries(slide, list(slide.nuc_dapi_px), ids, style))
    _write_parquet(j("cell_boundaries.parquet"), _boundaries(slide, slide.cell_polys_px, ids, style))

    cls = slide.cells.pannuke_class()
    truth = pd.DataFrame({"Barcode": id_text, "Cluster": slide.cells.label, "Class": cls,
                          "True_Type": slide.cells.type_name})
    buf = io.StringIO()
    truth.to_csv(buf, index=False)
    storage.write_bytes(j(f"{sid}_annotation.csv"), buf.getvalue().encode())

    w_um, h_um = slide.layout.size_um
    experiment = {
        "major_version": 5, "minor_version": 0, "patch_version": 0,
        "run_name": f"stx synthetic seed {slide.seed}", "run_start_time": "2026-01-01T00:00:00Z",
        "region_name": sid, "preservation_method": "FFPE", "num_cells": slide.n_cells,
        "transcripts_per_cell": int(np.median(np.asarray(mat[:, ftype == "Gene Expression"].sum(1)).ravel())),
        "region_area": float(w_um * h_um), "total_cell_area": float(cell_area.sum()),
        "num_transcripts": int(n_tx), "pixel_size": XENIUM_MORPHOLOGY_MPP,
        "analysis_sw_version": SOFTWARE[style.name], "panel_name": "stx synthetic multi-tissue panel",
        "panel_organism": "Human", "panel_tissue_type": slide.recipe.key, "z_step_size": 3.0,
        "images": {"morphology_filepath": "morphology.ome.tif"},
        "stx_generator": f"stx-platform {__version__}", "stx_seed": slide.seed,
    }
    storage.write_bytes(j("experiment.xenium"), json.dumps(experiment, indent=4).encode())
    counts = Counter(cls)
    return {"id": sid, "organ": slide.recipe.key, "cells": slide.n_cells, "transcripts": n_tx,
            "width_px": slide.width_px, "height_px": slide.height_px, "mpp": slide.mpp, "style": style.name,
            "classes": {c: int(counts.get(c, 0)) for c in LABEL_CLASSES}}


def _area(p: np.ndarray) -> float:
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
