"""Review before training: what the labelling made of each slide, in the formats people look at
slides with.

Per built slide, under ``<dataset>/review/<sample>/``:

- ``nuclei.geojson``: every nucleus as a QuPath detection (the GeoJSON of ``stx predict``)
  classified by its ST label, with the cluster, the cluster's class votes, its cancer overlap,
  whether the whole-database fallback voted and the area in um^2 as measurements;
- ``cells.h5ad``: raw counts with ``obs['stx_label']``, ``obs['stx_cluster']`` and
  ``obsm['spatial']`` (nucleus centroids in level-0 H&E pixels; ``uns['stx']['mpp']`` gives um/px)
  for scanpy and squidpy;
- ``labels.png``: the slide's thumbnail with every nucleus outlined in its label's colour.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import shapely

from stx_platform import storage

REVIEW_DIR = "review"
FILES = {"geojson": "nuclei.geojson", "h5ad": "cells.h5ad", "thumbnail": "labels.png"}
#: Label-table columns carried into QuPath as measurements.
MEASUREMENTS = ("cluster", "votes_epithelial", "votes_inflammatory", "votes_connective", "votes_unknown",
                "cancer_overlap", "fallback")


def review_paths(out: str, sample_id: str) -> dict[str, str]:
    return {k: storage.join(out, REVIEW_DIR, sample_id, v) for k, v in FILES.items()}


def nucleus_table(sample, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per nucleus: its contour (level-0 px), label as ``class_name``, area and the
    label table's evidence columns."""
    labels = cells.reindex(sample.cell_ids)
    area = shapely.area(sample.nuclei)
    table = pd.DataFrame({
        "contour": [shapely.get_coordinates(p.exterior)[:-1] for p in sample.nuclei],
        "class_name": labels["label"].astype(str).fillna("Unknown").to_numpy(),
        "area": area, "area_um2": area * sample.mpp ** 2,
    }, index=sample.cell_ids)
    for c in MEASUREMENTS:
        table[c] = labels[c].astype(np.float64).to_numpy()
    return table


def write_review(out: str, sample, cells: pd.DataFrame, thumbnail_px: int = 1600) -> dict[str, str]:
    """Write the three review files of ``sample`` labelled ``cells`` (a label table) into the
    dataset ``out``; returns their URLs."""
    from stx_platform.predict import overlay, write_geojson
    from stx_platform.taxonomy import LABEL_CLASSES
    from stx_platform.viz import save_png

    paths = review_paths(out, sample.sample_id)
    if "cell_id" in cells.columns:
        cells = cells.set_index("cell_id")
    nuclei = nucleus_table(sample, cells)
    write_geojson(paths["geojson"], nuclei, measurements=("area_um2", *MEASUREMENTS))

    a = ad.AnnData(X=sample.expression.X.copy(), obs=pd.DataFrame(index=sample.cell_ids.astype(str)),
                   var=pd.DataFrame(index=sample.expression.var_names.astype(str)))
    a.obs["stx_label"] = pd.Categorical(nuclei["class_name"].to_numpy(), categories=list(LABEL_CLASSES))
    a.obs["stx_cluster"] = pd.Categorical(cells["cluster"].reindex(sample.cell_ids).fillna(-1).astype(int)
                                          .astype(str).to_numpy())
    a.obsm["spatial"] = shapely.get_coordinates(shapely.centroid(sample.nuclei))
    a.uns["stx"] = {"sample_id": sample.sample_id, "organ": sample.organ, "mpp": float(sample.mpp),
                    "spatial_units": "level-0 H&E pixels"}
    with storage.staged_output(paths["h5ad"], ".h5ad") as tmp:
        a.write_h5ad(tmp, compression="gzip")

    thumb = sample.wsi.thumbnail(thumbnail_px)
    scale = thumb.shape[1] / sample.wsi.width
    save_png(paths["thumbnail"], overlay(thumb, nuclei, scale=scale, classes=list(LABEL_CLASSES)))
    return paths
