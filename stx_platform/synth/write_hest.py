"""Write a synthetic slide in the HEST-1k on-disk layout for Xenium samples.

Files per sample id (mahmoodlab/HEST, ``readers.py`` / ``utils.py`` / ``HESTData.py``):

- ``wsis/<id>.tif``: pyramidal tiled TIFF, 256 x 256 LZW tiles, resolution tags in pixels/cm
  (written 10x off for the "modern" style, as HEST's pyvips call does, issue #106);
- ``st/<id>.h5ad``: HEST's pseudo-Visium pooling of *all* transcripts (no QV filter, controls
  kept) into 100 um squares over the H&E: dense counts, obs ``RRRxCCC``, ``obsm['spatial']`` bin
  centres in level-0 pixels, ``uns['spatial']['ST']`` with the downscaled image and scale factors;
- ``transcripts/<id>_transcripts.parquet``: Xenium's columns plus ``he_x``, ``he_y``, ``dapi_x``,
  ``dapi_y``;
- ``xenium_seg/<id>_xenium_{nucleus,cell}_seg.parquet``: GeoParquet, a ``geometry`` column of
  polygons in H&E pixels, index = Xenium cell id;
- ``metadata/<id>.json``: HEST's 27 metadata keys (+ ``stx_*`` provenance keys);
- ``tissue_seg/<id>_contours.geojson``, ``thumbnails/<id>_downscaled_fullres.jpeg``.

Added by stx (not in HEST): ``annotations/<id>_annotation.csv`` (ground truth: Barcode = cell
id, Cluster = fine label, Class = PanNuke class) and ``thumbnails/<id>_truth.png``.
The metadata JSON is written last: a sample without it is not listed, so an interrupted write
never looks like a complete sample.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import anndata as ad
import cv2
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import scanpy as sc
import shapely
from PIL import Image

from stx_platform import __version__, storage
from stx_platform.progress import Progress
from stx_platform.sources.wsi import WSI, write_pyramid_tiff
from stx_platform.synth.formats import FormatStyle, transcript_table, xenium_cell_ids
from stx_platform.synth.layout import GLASS
from stx_platform.synth.preview import truth_preview
from stx_platform.synth.slide import SyntheticSlide
from stx_platform.synth.transcripts import generate
from stx_platform.taxonomy import LABEL_CLASSES

HEST_METADATA_KEYS = (
    "dataset_title", "id", "image_filename", "organ", "disease_state", "oncotree_code", "species", "patient",
    "st_technology", "data_publication_date", "license", "study_link", "download_page_link1", "inter_spot_dist",
    "spot_diameter", "spots_under_tissue", "preservation_method", "nb_genes", "treatment_comment",
    "pixel_size_um_embedded", "pixel_size_um_estimated", "magnification", "fullres_px_width", "fullres_px_height",
    "tissue", "disease_comment", "subseries",
)


def pseudo_visium(he_x: np.ndarray, he_y: np.ndarray, feature_codes: np.ndarray, feature_names: list[str],
                  mpp: float, thumbnail: np.ndarray, spot_um: float = 100.0) -> ad.AnnData:
    """HEST's Xenium pooling: square bins of ``spot_um`` from the transcripts' min corner."""
    px = spot_um / mpp
    x0, y0 = float(he_x.min()), float(he_y.min())
    n = int(np.ceil((he_x.max() - x0) / px)) or 1
    m = int(np.ceil((he_y.max() - y0) / px)) or 1
    col = np.minimum(((he_x - x0) / px).astype(np.int64), n - 1)
    row = np.minimum(((he_y - y0) / px).astype(np.int64), m - 1)
    G = len(feature_names)
    counts = np.bincount((row * n + col) * G + feature_codes, minlength=m * n * G).reshape(m * n, G)
    counts = np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16)
    i = np.arange(m * n)
    ar, ac = i // n, i % n
    obs = pd.DataFrame({
        "in_tissue": True,
        "pxl_col_in_fullres": x0 + (ac + 0.5) * px,
        "pxl_row_in_fullres": y0 + (ar + 0.5) * px,
        "array_col": ac, "array_row": ar,
    }, index=[f"{str(r).zfill(3)}x{str(c).zfill(3)}" for r, c in zip(ar, ac)])
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=pd.Index(feature_names, dtype=str)))
    sc.pp.filter_cells(adata, min_counts=1)
    adata.obsm["spatial"] = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    adata.var["mito"] = adata.var_names.str.startswith("MT-")
    top = tuple(k for k in (50, 100, 200, 500) if k < adata.n_vars)
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mito"], inplace=True, percent_top=top)
    h, w = thumbnail.shape[:2]
    adata.uns["spatial"] = {"ST": {"images": {"downscaled_fullres": thumbnail},
                                   "scalefactors": {"tissue_downscaled_fullres_scalef": None,
                                                    "spot_diameter_fullres": 55.0 / mpp}}}
    return adata


def _geoparquet(url: str, polys_px: list[np.ndarray] | np.ndarray, ids: np.ndarray) -> None:
    geoms = [shapely.Polygon(np.concatenate([p, p[:1]])) if len(p) >= 3 else shapely.Polygon() for p in polys_px]
    gdf = gpd.GeoDataFrame(geometry=geoms, index=pd.Index(list(ids)))
    with storage.staged_output(url, ".parquet") as tmp:
        gdf.to_parquet(tmp)


def _tissue_contours(slide: SyntheticSlide) -> dict:
    lay = slide.layout
    mask = (lay.comp != GLASS).astype(np.uint8)
    contours, hier = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    k = lay.grid_um / slide.mpp
    feats = []
    if hier is not None:
        for i, c in enumerate(contours):
            if hier[0][i][3] != -1 or len(c) < 3:
                continue
            shell = (c[:, 0, :] * k).tolist()
            holes = [(contours[j][:, 0, :] * k).tolist() for j in range(len(contours))
                     if hier[0][j][3] == i and len(contours[j]) >= 3]
            poly = shapely.Polygon(shell, holes).buffer(0)
            feats.append({"type": "Feature", "properties": {"tissue_id": len(feats)},
                          "geometry": shapely.geometry.mapping(poly)})
    return {"type": "FeatureCollection", "features": feats}


def write_hest_sample(slide: SyntheticSlide, root: str, style: FormatStyle, progress: Progress | None = None, workers: int = 1) -> dict:
    """Write every file of one sample under ``root``; returns a summary."""
    sid = slide.sample_id
    j = lambda *p: storage.join(root, *p)  # noqa: E731
    rng = np.random.default_rng([slide.seed, 99])
    ids = xenium_cell_ids(slide.n_cells, style, offset=slide.seed)
    say = progress or Progress(None)

    # 1. H&E
    renderer = slide.renderer()
    tag_mpp = slide.mpp / 10 if style.name == "modern" else slide.mpp
    say(f"rendering H&E {slide.width_px} x {slide.height_px} px")
    write_pyramid_tiff(j("wsis", f"{sid}.tif"), slide.width_px, slide.height_px, renderer.render, slide.mpp,
                       tag_mpp=tag_mpp, progress=say.fraction("H&E rows"),
                       workers=workers)
    with WSI(j("wsis", f"{sid}.tif"), sid) as wsi:
        thumb = wsi.thumbnail(1000)

    # 2. transcripts (streamed), then HEST's pseudo-Visium pooling of them
    say("writing transcripts")
    n_tx = 0
    tx_url = j("transcripts", f"{sid}_transcripts.parquet")
    with storage.staged_output(tx_url, ".parquet") as tmp:
        writer = None
        for chunk in generate(slide, rng, style.controls):
            table = transcript_table(slide, chunk, style, ids, 281_474_976_710_656 + n_tx, hest=True)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
            writer.write_table(table)
            n_tx += table.num_rows
        writer.close()
        cols = pq.read_table(tmp, columns=["he_x", "he_y", "feature_name"])
    fcol = cols.column("feature_name").combine_chunks().dictionary_encode()
    names = [v.decode() if isinstance(v, bytes) else v for v in fcol.dictionary.to_pylist()]
    adata = pseudo_visium(cols.column("he_x").to_numpy(), cols.column("he_y").to_numpy(),
                          fcol.indices.to_numpy(), names, slide.mpp, thumb)
    adata.uns["spatial"]["ST"]["scalefactors"]["tissue_downscaled_fullres_scalef"] = 1000 / max(
        slide.width_px, slide.height_px)
    del cols
    with storage.staged_output(j("st", f"{sid}.h5ad"), ".h5ad") as tmp:
        adata.write_h5ad(tmp)

    say(f"{n_tx:,} transcripts, {adata.n_obs} pseudo-spots; writing polygons")
    # 3. nucleus / cell polygons (DAPI-derived, registered to the H&E)
    _geoparquet(j("xenium_seg", f"{sid}_xenium_nucleus_seg.parquet"), slide.nuc_dapi_px, ids)
    _geoparquet(j("xenium_seg", f"{sid}_xenium_cell_seg.parquet"), slide.cell_polys_px, ids)

    say("writing ground truth and pictures")
    # 4. ground truth, tissue contours, pictures
    cls = slide.cells.pannuke_class()
    bar = [v.decode() if isinstance(v, bytes) else str(v) for v in ids]
    truth = pd.DataFrame({"Barcode": bar, "Cluster": slide.cells.label, "Class": cls,
                          "True_Type": slide.cells.type_name,
                          "Compartment": slide.cells.compartment})
    storage.write_bytes(j("annotations", f"{sid}_annotation.csv"), truth.to_csv(index=False).encode())
    storage.write_json(j("tissue_seg", f"{sid}_contours.geojson"), _tissue_contours(slide))
    buf = io.BytesIO()
    Image.fromarray(thumb).save(buf, format="JPEG", quality=90)
    storage.write_bytes(j("thumbnails", f"{sid}_downscaled_fullres.jpeg"), buf.getvalue())
    from stx_platform.viz import save_png
    save_png(j("thumbnails", f"{sid}_truth.png"), truth_preview(slide, thumb, renderer))

    # 5. metadata last: it is what makes the sample visible
    meta = {
        "dataset_title": "stx-platform synthetic Xenium slides",
        "id": sid,
        "image_filename": f"{sid}.tif",
        "organ": slide.recipe.hest_organ,
        "disease_state": "Cancer" if slide.has_tumour else "Healthy",
        "oncotree_code": slide.recipe.oncotree_code if slide.has_tumour else None,
        "species": "Homo sapiens",
        "patient": f"Patient {slide.seed % 97 + 1}",
        "st_technology": "Xenium",
        "data_publication_date": "1/1/26",
        "license": "CC BY 4.0",
        "study_link": None,
        "download_page_link1": None,
        "inter_spot_dist": None,
        "spot_diameter": None,
        "spots_under_tissue": int(adata.n_obs),
        "preservation_method": "FFPE",
        "nb_genes": int(adata.n_vars),
        "treatment_comment": None,
        "pixel_size_um_embedded": tag_mpp,
        "pixel_size_um_estimated": slide.mpp,
        "magnification": "40x",
        "fullres_px_width": slide.width_px,
        "fullres_px_height": slide.height_px,
        "tissue": slide.recipe.tissue,
        "disease_comment": None,
        "subseries": f"synthetic seed {slide.seed}",
        "stx_generator": f"stx-platform {__version__}",
        "stx_seed": slide.seed,
        "stx_format_style": style.name,
        "stx_ground_truth": f"annotations/{sid}_annotation.csv",
    }
    storage.write_bytes(j("metadata", f"{sid}.json"), json.dumps(meta, indent=3).encode())
    counts = Counter(cls)
    return {"id": sid, "organ": slide.recipe.key, "cells": slide.n_cells, "transcripts": n_tx,
            "width_px": slide.width_px, "height_px": slide.height_px, "mpp": slide.mpp,
            "style": style.name, "classes": {c: int(counts.get(c, 0)) for c in LABEL_CLASSES}}
