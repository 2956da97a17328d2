"""Serialisation details shared by the HEST and Xenium-bundle writers: cell ids, transcript tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from stx_platform.synth.panel import control_features, gene_panel
from stx_platform.synth.slide import SyntheticSlide
from stx_platform.synth.transcripts import TranscriptChunk, morphology_px

_HEX = str.maketrans("0123456789abcdef", "abcdefghijklmnop")


@dataclass(frozen=True)
class FormatStyle:
    """Which generation of Xenium output a slide imitates.

    ``v1``: XOA 1.0-1.2, integer cell ids (-1 unassigned), BLANK_ codewords, no codeword columns.
    ``modern``: XOA >= 1.3, string cell ids like ``aaaaficg-1`` ("UNASSIGNED"), codeword columns.
    ``bytes``: as modern, but ids and feature names stored as bytes (seen in HEST, issue #109).
    """

    name: str

    @property
    def controls(self) -> str:
        return "v1" if self.name == "v1" else "modern"


STYLES = (FormatStyle("modern"), FormatStyle("v1"), FormatStyle("bytes"))


def xenium_cell_ids(n: int, style: FormatStyle, offset: int = 0) -> np.ndarray:
    """Cell ids as that Xenium generation writes them (string ids: hex digits shifted to a-p, plus -1)."""
    if style.name == "v1":
        return np.arange(1, n + 1, dtype=np.int64)
    base = 0x1000_0000 + offset * 4099 + np.arange(n, dtype=np.int64) * 37
    ids = np.array([f"{v:08x}".translate(_HEX) + "-1" for v in base], dtype=object)
    if style.name == "bytes":
        return np.array([s.encode() for s in ids], dtype=object)
    return ids


def features(style: FormatStyle) -> tuple[str, ...]:
    return gene_panel() + control_features(style.controls)


def codeword_category(name: str) -> str:
    if name.startswith("NegControlProbe_"):
        return "negative_control_probe"
    if name.startswith("NegControlCodeword_"):
        return "negative_control_codeword"
    if name.startswith("UnassignedCodeword_") or name.startswith("BLANK_"):
        return "unassigned_codeword"
    return "predesigned_gene"


def _dict_column(codes: np.ndarray, values: list, binary: bool = False) -> pa.Array:
    """Materialised string (or binary) column from integer codes into ``values`` (C++ speed)."""
    typ = pa.binary() if binary else pa.string()
    vals = [v.encode() if binary and isinstance(v, str) else v for v in values]
    arr = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(vals, typ))
    return arr.cast(typ)


def transcript_table(slide: SyntheticSlide, chunk: TranscriptChunk, style: FormatStyle, ids: np.ndarray,
                     first_id: int, hest: bool) -> pa.Table:
    """One chunk as a Xenium ``transcripts.parquet`` table (plus HEST's he_/dapi_ columns if ``hest``)."""
    names = list(features(style))
    x_um, y_um, dx, dy = morphology_px(slide, chunk.x_um, chunk.y_um)
    own = chunk.owner
    binary = style.name == "bytes"
    if style.name == "v1":
        cid = pa.array(np.where(own >= 0, ids[np.maximum(own, 0)], -1).astype(np.int32))
    else:
        id_values = [v.decode() if isinstance(v, bytes) else v for v in ids] + ["UNASSIGNED"]
        cid = _dict_column(np.where(own >= 0, own, len(ids)), id_values, binary)
    cols = {
        "transcript_id": pa.array(np.arange(first_id, first_id + len(chunk), dtype=np.uint64)),
        "cell_id": cid,
        "overlaps_nucleus": pa.array(chunk.overlaps_nucleus.astype(np.uint8)),
        "feature_name": _dict_column(chunk.feature, names, binary),
        "x_location": pa.array(x_um.astype(np.float32)),
        "y_location": pa.array(y_um.astype(np.float32)),
        "z_location": pa.array(chunk.z_um.astype(np.float32)),
        "qv": pa.array(chunk.qv.astype(np.float32)),
    }
    if style.name != "v1":
        fov_w = 1200.0
        r = np.clip(np.floor(y_um / fov_w), 0, 25).astype(np.int64)
        c = np.clip(np.floor(x_um / fov_w), 0, 98).astype(np.int64)
        fov_names = [f"{chr(65 + i)}{j + 1}" for i in range(26) for j in range(99)]
        cats = sorted({codeword_category(n) for n in names})
        cat_of = np.array([cats.index(codeword_category(n)) for n in names])
        cols["fov_name"] = _dict_column(r * 99 + c, fov_names)
        cols["nucleus_distance"] = pa.array(chunk.nucleus_distance.astype(np.float32))
        cols["codeword_index"] = pa.array(chunk.feature.astype(np.int32) + 1)
        cols["codeword_category"] = _dict_column(cat_of[chunk.feature], cats)
        cols["is_gene"] = pa.array(chunk.feature < len(gene_panel()))
    if hest:
        cols["he_x"] = pa.array((chunk.x_um / slide.mpp).astype(np.float64))
        cols["he_y"] = pa.array((chunk.y_um / slide.mpp).astype(np.float64))
        cols["dapi_x"] = pa.array(dx.astype(np.float64))
        cols["dapi_y"] = pa.array(dy.astype(np.float64))
    return pa.table(cols)
