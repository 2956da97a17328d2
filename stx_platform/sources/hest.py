"""Reader for Xenium samples in the HEST-1k layout (local folder, file:// or s3://).

Layout and conventions, from mahmoodlab/HEST (``src/hest/HESTData.py`` ``_read_st`` /
``read_HESTData``, ``readers.py`` ``XeniumReader``, ``utils.py``; issues #38, #54, #97, #106,
#109, #118) and its Hugging Face dataset card:

- ``metadata/<id>.json``: ``pixel_size_um_estimated`` is the H&E pixel size to use (the TIFF
  resolution tag and ``pixel_size_um_embedded`` can be 10x off, issue #106); ``organ``.
- ``wsis/<id>.tif``: pyramidal H&E at native resolution.
- ``xenium_seg/<id>_xenium_nucleus_seg.parquet``: GeoParquet, ``geometry`` = nucleus polygons in
  level-0 H&E pixels, index = Xenium ``cell_id`` (int, str or bytes depending on the sample).
- ``st/<id>.h5ad``: for Xenium this is *not* per cell but HEST's 100 um pseudo-Visium pooling
  (obs ``RRRxCCC``, controls included); when its obs are not the nucleus ids, per-cell
  expression is rebuilt from ``transcripts/<id>_transcripts.parquet`` (``feature_name``,
  ``cell_id``, ``qv``, ``overlaps_nucleus``, ``he_x``/``he_y`` in H&E pixels).
- ``annotations/<id>_annotation.csv`` (stx extension, optional): ground truth.
"""

from __future__ import annotations

import json

import anndata as ad
import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.sources.annotations import read_ground_truth
from stx_platform.sources.expression import MIN_QV, count_parquet
from stx_platform.sources.features import gene_mask, normalise_cell_ids
from stx_platform.sources.sample import (
    Sample,
    align_expression,
    check_counts,
    check_pixel_size,
    check_sample_id,
    polygons_from_geometry,
    read_input,
    usable_nuclei,
)
from stx_platform.sources.wsi import WSI

ASSIGNMENT_MODES = ("cell_id", "nucleus", "polygon")


def _metadata_ids(root: str) -> list[str]:
    return sorted(n[:-5] for n in storage.listdir(storage.join(root, "metadata")) if n.endswith(".json")
                  and not n.startswith("."))


def hest_technologies(root: str) -> dict[str, str]:
    """Sample id -> ``st_technology`` of every sample under a HEST root (Xenium when unsaid or
    unreadable: reading the sample then says what is wrong). Metadata files are fetched together."""
    ids = _metadata_ids(root)
    if not ids:
        return {}
    fs, path = storage.filesystem(storage.join(root, "metadata"))
    paths = [f"{path}/{sid}.json" for sid in ids]
    raw = fs.cat(paths, on_error="return")
    out = {}
    for sid, p in zip(ids, paths):
        try:
            tech = json.loads(raw[p].decode("utf-8")).get("st_technology")
        except Exception:  # noqa: BLE001 - read_metadata names the problem when the sample is read
            tech = None
        out[sid] = str(tech or "Xenium")
    return out


def list_hest_samples(root: str) -> list[str]:
    """Xenium sample ids under a HEST root: those with a ``metadata/<id>.json`` (written last)
    whose ``st_technology`` is Xenium; HEST-1k also holds Visium and ST samples, which have no
    per-cell expression or nucleus segmentation (:func:`hest_technologies` names them all)."""
    return [sid for sid, tech in hest_technologies(root).items() if tech.lower() == "xenium"]


def read_metadata(root: str, sample_id: str) -> dict:
    rel = f"metadata/{sample_id}.json"
    url = storage.join(root, rel)
    try:
        raw = storage.read_bytes(url)
    except FileNotFoundError:
        raise SampleError(sample_id, rel, f"file not found under {root}") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError(sample_id, rel, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SampleError(sample_id, rel, "expected a JSON object")
    return meta


def _read_nuclei(root: str, sample_id: str) -> tuple[np.ndarray, pd.Index]:
    rel = f"xenium_seg/{sample_id}_xenium_nucleus_seg.parquet"
    url = storage.join(root, rel)
    if not storage.exists(url):
        raise SampleError(sample_id, rel, "file not found: nucleus polygons are required (HEST publishes them for "
                                          "Xenium samples only)")
    try:
        with storage.open_file(url) as f:
            gdf = gpd.read_parquet(f)
    except Exception as e:
        raise SampleError(sample_id, rel, f"not a readable GeoParquet file ({type(e).__name__}: {e})") from None
    ids = normalise_cell_ids(gdf.index.to_numpy())
    if not ids.is_unique:
        raise SampleError(sample_id, rel, f"{int(ids.duplicated().sum())} duplicate cell ids")
    return polygons_from_geometry(gdf.geometry.to_numpy(), sample_id, rel), ids


def _h5ad_obs_names(url: str) -> pd.Index:
    with storage.open_file(url) as f, h5py.File(f, "r") as h:
        obs = h["obs"]
        key = obs.attrs.get("_index", "_index")
        return normalise_cell_ids(obs[key][:])


def _per_cell_h5ad(url: str, rel: str, sample_id: str, nucleus_ids: pd.Index):
    with storage.open_file(url) as f:
        adata = ad.read_h5ad(f)
    genes = gene_mask(adata.var_names, feature_type=adata.var["feature_types"] if "feature_types" in adata.var else None)
    X = check_counts(adata.X if genes.all() else adata.X[:, genes], sample_id, rel)
    return X, normalise_cell_ids(adata.obs_names), [str(g) for g in adata.var_names[genes]]


def _transcript_expression(root: str, sample_id: str, nucleus_ids: pd.Index, nuclei: np.ndarray, mode: str,
                           min_qv: float):
    rel = f"transcripts/{sample_id}_transcripts.parquet"
    url = storage.join(root, rel)
    if not storage.exists(url):
        raise SampleError(sample_id, rel, "file not found: st/*.h5ad is not per cell (HEST pools Xenium into 100 um "
                                          "pseudo-spots), so per-cell expression must be built from the transcripts")
    need = {"cell_id": ["feature_name", "cell_id"], "nucleus": ["feature_name", "cell_id", "overlaps_nucleus"],
            "polygon": ["feature_name", "he_x", "he_y"]}[mode]

    def count(f):
        have = set(pq.read_schema(f).names)
        missing = [c for c in need if c not in have]
        if missing:
            raise SampleError(sample_id, rel, f"missing column(s) {missing} needed for assignment mode {mode!r} "
                                              f"(columns: {sorted(have)})")
        cols = need + [c for c in ("qv", "is_gene") if c in have]
        return count_parquet(f, cols, nucleus_ids, min_qv=min_qv, mode=mode, nuclei=nuclei)
    mat, genes, stats = read_input(url, sample_id, rel, count, "Parquet")
    if stats.transcripts == 0:
        raise SampleError(sample_id, rel, "no transcripts")
    if stats.kept == 0:
        raise SampleError(sample_id, rel, "no transcript could be assigned to a nucleus: cell ids differ between "
                                          f"transcripts and nucleus polygons (e.g. {nucleus_ids[0]!r}), or no "
                                          f"transcript passed qv >= {min_qv}")
    X = check_counts(mat, sample_id, rel)
    return X, genes, stats


def open_hest_wsi(root: str, sample_id: str, meta: dict | None = None) -> tuple[WSI, float]:
    """The H&E of a HEST-1k sample and its um per level-0 pixel (``pixel_size_um_estimated``)."""
    meta = read_metadata(root, sample_id) if meta is None else meta
    mpp = check_pixel_size(meta.get("pixel_size_um_estimated"), sample_id, f"metadata/{sample_id}.json",
                           "pixel_size_um_estimated")
    wsi_rel = f"wsis/{sample_id}.tif"
    if not storage.exists(storage.join(root, wsi_rel)):
        raise SampleError(sample_id, wsi_rel, f"file not found under {root}")
    return WSI(storage.join(root, wsi_rel), sample_id, wsi_rel), mpp


def read_hest_sample(root: str, sample_id: str, *, assignment: str = "cell_id", min_qv: float = MIN_QV) -> Sample:
    """Read one Xenium sample from a HEST-1k folder; every bad input is a ``SampleError``."""
    check_sample_id(sample_id, root)
    if assignment not in ASSIGNMENT_MODES:
        raise ValueError(f"assignment must be one of {ASSIGNMENT_MODES}, not {assignment!r}")
    meta = read_metadata(root, sample_id)
    wsi, mpp = open_hest_wsi(root, sample_id, meta)
    width, height = wsi.width, wsi.height  # opens the header: a corrupt TIFF fails here
    nuclei, nucleus_ids = _read_nuclei(root, sample_id)
    nuclei, nucleus_ids, dropped = usable_nuclei(nuclei, nucleus_ids, width, height, sample_id,
                                                 f"xenium_seg/{sample_id}_xenium_nucleus_seg.parquet")

    st_rel = f"st/{sample_id}.h5ad"
    st_url = storage.join(root, st_rel)
    per_cell = False
    if storage.exists(st_url):
        try:
            obs = _h5ad_obs_names(st_url)
        except Exception as e:
            raise SampleError(sample_id, st_rel, f"not a readable h5ad file ({type(e).__name__}: {e})") from None
        per_cell = len(obs) > 0 and obs.isin(nucleus_ids).mean() > 0.5
    if per_cell:
        X, expr_ids, genes = _per_cell_h5ad(st_url, st_rel, sample_id, nucleus_ids)
        prov = {"expression_from": st_rel}
        expr_file = st_rel
    else:
        X, genes, stats = _transcript_expression(root, sample_id, nucleus_ids, nuclei, assignment, min_qv)
        expr_ids = nucleus_ids
        prov = {"expression_from": f"transcripts/{sample_id}_transcripts.parquet", "assignment": assignment,
                "min_qv": min_qv, **{f"transcripts_{k}": v for k, v in stats.as_dict().items()}}
        expr_file = prov["expression_from"]
    adata, extra = align_expression(X, expr_ids, genes, nucleus_ids, sample_id, expr_file)
    prov.update(extra, **dropped)
    truth = read_ground_truth(storage.join(root, "annotations", f"{sample_id}_annotation.csv"), sample_id)
    return Sample(sample_id=sample_id, organ=str(meta.get("organ") or "unknown"), mpp=mpp, wsi=wsi, nuclei=nuclei,
                  expression=adata, metadata=meta, source=f"{root}#{sample_id}", technology=str(
                      meta.get("st_technology") or "Xenium"), ground_truth=truth, provenance=prov)
