"""Label-only inputs: per-cell expression without an H&E image.

``stx label`` needs one raw-count vector per cell and the organ, nothing else, so it also takes
what users often have on their own:

- a Xenium output folder without H&E (Xenium Onboard Analysis 1.x-3.x, Xenium Ranger ``outs``):
  ``cell_feature_matrix.h5`` when present, else ``transcripts.parquet`` counted per cell
  (``is_gene`` and qv >= 20 as Xenium's own matrix), the cells listed in ``cells.parquet``;
  ``experiment.xenium`` when present gives the organ and run metadata;
- a 10x feature-barcode matrix file (``cell_feature_matrix.h5``);
- an ``.h5ad`` with raw counts in ``layers['counts']``, ``.raw`` or ``X`` (in that order);
- a HEST-1k sample (``ROOT#ID``), read as for a build.

The organ comes from the caller, else from the file's metadata (``panel_tissue_type`` when it
names an organ, else an organ named in the region, panel or run name; an ``.h5ad``'s
``uns['organ']`` or a single-valued ``obs['organ']``); otherwise it is ``unknown`` and a warning
says that only organ-agnostic markers will vote.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.organs import ORGANS, canonical_organ, experiment_organ, organ_from_metadata
from stx_platform.sources.expression import MIN_QV, count_parquet
from stx_platform.sources.features import gene_mask, normalise_cell_ids
from stx_platform.sources.sample import (
    align_expression,
    check_counts,
    check_sample_id,
    folder_sample_id,
    read_input,
)

MATRIX_FILE = "cell_feature_matrix.h5"
#: Files that make a folder a Xenium output (any software version, with or without H&E).
BUNDLE_MARKERS = ("experiment.xenium", MATRIX_FILE, "cells.parquet")


@dataclass
class CellsSample:
    """What labelling needs of a sample: cells x genes raw counts (genes only) and the organ."""

    sample_id: str
    organ: str
    expression: ad.AnnData
    metadata: dict
    source: str
    ground_truth: pd.DataFrame | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_cells(self) -> int:
        return self.expression.n_obs


def _organ_warnings(found: str | None, given: str | None, organism, source: str) -> list[str]:
    out = []
    if given and found is None:
        out.append(f"{source}: organ {given!r} is not one of {', '.join(ORGANS)}; only organ-agnostic markers vote")
    elif found is None:
        out.append(f"{source}: no organ given or found in the metadata; only organ-agnostic markers vote "
                   "(pass --organ)")
    if organism and str(organism).strip().lower() not in ("human", "homo sapiens"):
        out.append(f"{source}: panel organism is {organism}; the marker databases are human, so few genes "
                   "will match")
    return out


def is_xenium_bundle(url: str) -> bool:
    """A Xenium output folder of any version, with or without H&E: it holds one of
    :data:`BUNDLE_MARKERS` (a build refuses one that lacks what patches need, naming the file)."""
    return any(storage.exists(storage.join(url, m)) for m in BUNDLE_MARKERS)


def read_experiment(url: str, sid: str, required: bool = True) -> dict:
    """A folder's ``experiment.xenium`` (JSON); ``{}`` when absent and not ``required``."""
    rel = "experiment.xenium"
    try:
        return json.loads(storage.read_bytes(storage.join(url, rel)).decode("utf-8"))
    except FileNotFoundError:
        if not required:
            return {}
        raise SampleError(sid, rel, f"file not found in {url}: it gives the morphology pixel size that places the "
                                    "nuclei on the H&E (`stx label` labels this folder without it)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError(sid, rel, f"not valid JSON ({e})") from None


def read_cell_ids(url: str, sid: str) -> pd.Index | None:
    """The cell ids of a Xenium folder's ``cells.parquet`` (None when it has none)."""
    rel = "cells.parquet"
    u = storage.join(url, rel)
    if not storage.exists(u):
        return None
    t = read_input(u, sid, rel, lambda f: pq.read_table(f, columns=["cell_id"]), "Parquet")
    return normalise_cell_ids(t.column("cell_id").to_numpy(zero_copy_only=False))


def transcripts_per_cell(url: str, sid: str, cells: pd.Index, min_qv: float = MIN_QV, mode: str = "cell_id"):
    """(counts cells x genes, gene names, provenance) from a Xenium folder's ``transcripts.parquet``:
    gene transcripts with qv >= ``min_qv`` by ``cell_id``; ``mode="nucleus"`` keeps only those
    over the cell's nucleus (``overlaps_nucleus``)."""
    rel = "transcripts.parquet"
    u = storage.join(url, rel)
    if not storage.exists(u):
        raise SampleError(sid, rel, f"file not found in {url}: needed to count transcripts per cell")
    need = ["cell_id", "feature_name"] + (["overlaps_nucleus"] if mode == "nucleus" else [])

    def count(f):
        have = set(pq.read_schema(f).names)
        missing = [c for c in need if c not in have]
        if missing:
            raise SampleError(sid, rel, f"missing column(s) {missing} (columns: {sorted(have)})")
        return count_parquet(f, need + [c for c in ("qv", "is_gene") if c in have], cells, min_qv=min_qv, mode=mode)
    mat, genes, stats = read_input(u, sid, rel, count, "Parquet")
    if stats.kept == 0:
        raise SampleError(sid, rel, f"no transcript of a gene with qv >= {min_qv} belongs to a listed cell"
                                    + (" over its nucleus" if mode == "nucleus" else ""))
    return check_counts(mat, sid, rel), genes, {"expression_from": rel, "assignment": mode, "min_qv": min_qv,
                                                **{f"transcripts_{k}": v for k, v in stats.as_dict().items()}}


def read_xenium_cells(url: str, sample_id: str | None = None, organ: str | None = None,
                      min_qv: float = MIN_QV) -> CellsSample:
    """Per-cell expression of a Xenium output folder, with or without H&E (see module docstring)."""
    from stx_platform.sources.xenium import read_matrix

    url = url.rstrip("/")
    sid = check_sample_id(sample_id or folder_sample_id(url), url)
    exp = read_experiment(url, sid, required=False)
    if storage.exists(storage.join(url, MATRIX_FILE)):
        X, ids, genes = read_matrix(storage.join(url, MATRIX_FILE), sid, MATRIX_FILE)
        prov = {"expression_from": MATRIX_FILE}
    else:
        ids = read_cell_ids(url, sid)
        if ids is None:
            raise SampleError(sid, None, f"{url} has neither {MATRIX_FILE} nor cells.parquet with "
                                         "transcripts.parquet")
        X, genes, prov = transcripts_per_cell(url, sid, ids, min_qv)
    adata, _ = align_expression(X, ids, genes, ids, sid, prov["expression_from"])
    found = canonical_organ(organ) or experiment_organ(exp)
    meta = {k: exp.get(k) for k in ("analysis_sw_version", "panel_name", "panel_organism", "panel_tissue_type",
                                    "region_name", "run_name", "pixel_size", "num_cells") if k in exp}
    return CellsSample(sid, found or "unknown", adata, {**meta, **prov}, url,
                       warnings=_organ_warnings(found, organ, exp.get("panel_organism"), url))


def read_matrix_file(url: str, sample_id: str | None = None, organ: str | None = None) -> CellsSample:
    """A 10x feature-barcode ``.h5`` (genes only); an ``experiment.xenium`` beside it gives the organ."""
    from stx_platform.sources.xenium import read_matrix

    name = posixpath.basename(url.rstrip("/"))
    folder = posixpath.dirname(url.rstrip("/"))
    default_id = folder_sample_id(folder) if name == MATRIX_FILE and folder else name.rsplit(".", 1)[0]
    sid = check_sample_id(sample_id or default_id, url)
    X, ids, genes = read_matrix(url, sid, name)
    adata, _ = align_expression(X, ids, genes, ids, sid, name)
    exp = read_experiment(folder, sid, required=False) if folder else {}
    found = canonical_organ(organ) or experiment_organ(exp)
    return CellsSample(sid, found or "unknown", adata, {"expression_from": name}, url,
                       warnings=_organ_warnings(found, organ, exp.get("panel_organism"), url))


def _raw_counts(adata: ad.AnnData):
    """(counts, gene names, where they came from): ``layers['counts']``, ``.raw``, else ``X``."""
    if "counts" in adata.layers:
        return adata.layers["counts"], adata.var_names, "layers['counts']"
    if adata.raw is not None:
        return adata.raw.X, adata.raw.var_names, "raw.X"
    return adata.X, adata.var_names, "X"


def read_h5ad_cells(url: str, sample_id: str | None = None, organ: str | None = None) -> CellsSample:
    """An AnnData file of raw counts, one row per cell."""
    name = posixpath.basename(url.rstrip("/"))
    sid = check_sample_id(sample_id or name.removesuffix(".h5ad"), url)
    adata = read_input(url, sid, name, ad.read_h5ad, "h5ad")
    X, var_names, where = _raw_counts(adata)
    ftype = adata.var["feature_types"] if where != "raw.X" and "feature_types" in adata.var else None
    genes = gene_mask(var_names, feature_type=ftype)
    try:
        X = check_counts(X if genes.all() else X[:, np.flatnonzero(genes)], sid, f"{name} {where}")
    except SampleError as e:
        raise SampleError(sid, name, f"{where}: {e.problem}; store raw counts in layers['counts'] or .raw") from None
    ids = normalise_cell_ids(adata.obs_names)
    expr, _ = align_expression(X, ids, [str(g) for g in np.asarray(var_names)[genes]], ids, sid, name)
    obs_organ = None
    if "organ" in adata.obs and adata.obs["organ"].nunique() == 1:
        obs_organ = str(adata.obs["organ"].iloc[0])
    found = canonical_organ(organ) or organ_from_metadata(adata.uns.get("organ"), obs_organ)
    truth = None
    if "class" in adata.obs:
        truth = pd.DataFrame({"class": adata.obs["class"].astype(str).to_numpy()}, index=pd.Index(ids, dtype=str))
    return CellsSample(sid, found or "unknown", expr, {"expression_from": f"{name} {where}"}, url,
                       ground_truth=truth, warnings=_organ_warnings(found, organ, adata.uns.get("organism"), url))


def cell_refs(url: str) -> list[str]:
    """What ``stx label`` reads at ``url``: the file itself (``.h5``, ``.h5ad``), else the sample
    references :func:`stx_platform.sources.sample_refs` finds (HEST samples, Xenium folders)."""
    from stx_platform.sources import sample_refs

    url = str(url).rstrip("/")
    return [url] if url.endswith((".h5", ".h5ad")) else sample_refs(url)


def read_cells(ref: str, organ: str | None = None, sample_id: str | None = None):
    """The per-cell expression a reference names (a full ``Sample`` for HEST references)."""
    if "#" in ref:
        from stx_platform.sources import read_sample

        s = read_sample(ref)
        if organ:
            s.organ = canonical_organ(organ) or organ
        return s
    if ref.endswith(".h5ad"):
        return read_h5ad_cells(ref, sample_id, organ)
    if ref.endswith(".h5"):
        return read_matrix_file(ref, sample_id, organ)
    if not is_xenium_bundle(ref):
        raise SampleError(sample_id or posixpath.basename(ref.rstrip("/")), None,
                          f"{ref} is neither a Xenium output folder ({', '.join(BUNDLE_MARKERS)}), a 10x .h5 "
                          "matrix, an .h5ad nor a HEST reference ROOT#ID")
    return read_xenium_cells(ref, sample_id, organ)
