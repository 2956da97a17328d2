"""A PanNuke-format fold written as a built dataset: one patch shard and one label table per
tissue, and a manifest, so a model trains on PanNuke through the very ingest, augmentation, trainer
and budget that train the ST model (Table 2 compares the two with nothing else changed).

Each image is one patch (0.25 um/px, 256 px); instance k of image i is cell ``"<i>_<k>"``, its label
the PanNuke class of its mask channel. Dead nuclei are labelled Unknown: no ST label can be Dead,
so neither model learns that class (it is left out of the type loss, as Unknown is).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stx_platform import storage
from stx_platform.build.manifest import DONE, SlideRecord, label_path, shard_path, write_manifest
from stx_platform.labels.table import to_arrow, write_label_table
from stx_platform.patches.schema import encode_image, encode_instance_map, records_to_table
from stx_platform.sources.pannuke import PanNukeFold
from stx_platform.taxonomy import DEAD, LABEL_CLASSES, UNKNOWN

#: the label set id of a converted fold
LABEL_SET = "pannuke"
MPP = 0.25


def _sample_id(tissue: str) -> str:
    return "PanNuke_" + re.sub(r"[^A-Za-z0-9_]", "_", tissue)


def _record(sample_id: str, tissue: str, i: int, image: np.ndarray, inst: np.ndarray) -> dict:
    ids = np.unique(inst[inst > 0])
    edge = np.unique(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]]))
    h, w = inst.shape
    return {"sample_id": sample_id, "organ": tissue, "patch_id": f"{sample_id}_{i}", "x": 0, "y": 0,
            "width_l0": w, "height_l0": h, "mpp": MPP, "slide_mpp": MPP, "size": h,
            "image": encode_image(image), "image_format": "png", "instance_map": encode_instance_map(inst),
            "cell_ids": [f"{i}_{k}" for k in ids], "touches_border": [bool(k in edge) for k in ids],
            "nucleus_count": len(ids), "tissue_fraction": 1.0}


def _label_frame(cells: list[tuple[str, str]]) -> pd.DataFrame:
    df = pd.DataFrame(cells, columns=["cell_id", "label"])
    df["label"] = df["label"].where(df["label"].isin(LABEL_CLASSES), UNKNOWN)
    df["cluster"] = -1
    for col in ("votes_epithelial", "votes_inflammatory", "votes_connective", "votes_unknown", "cancer_overlap"):
        df[col] = np.nan
    df["fallback"] = False
    return df


def write_pannuke_dataset(fold_url: str, out: str, progress=None) -> dict:
    """Write the fold at ``fold_url`` as a dataset under ``out`` (kept when ``out`` already holds
    this fold's conversion); returns its manifest."""
    say = progress or (lambda m: None)
    url = storage.join(out, "manifest.json")
    fold = PanNukeFold(fold_url)
    if storage.exists(url):
        doc = storage.read_json(url)
        if doc.get("source") == fold_url and doc.get("images") == len(fold):
            return doc
    t0 = time.perf_counter()
    by_tissue: dict[str, list[int]] = {}
    for i, t in enumerate(fold.types.tolist()):
        by_tissue.setdefault(str(t), []).append(i)
    records = []
    for tissue, idx in sorted(by_tissue.items()):
        sid = _sample_id(tissue)
        rows, cells = [], []
        for i in idx:
            item = fold[i]
            rows.append(_record(sid, tissue, i, item.image, item.instances))
            cells += [(f"{i}_{k}", UNKNOWN if c == DEAD else c) for k, c in sorted(item.classes.items())]
        with storage.staged_output(storage.join(out, shard_path(sid)), ".parquet") as tmp:
            pq.write_table(records_to_table(rows), tmp, compression="none", row_group_size=64)
        labels = _label_frame(cells)
        write_label_table(storage.join(out, label_path(LABEL_SET, sid)),
                          to_arrow(labels, {"sample_id": sid, "label_set_id": LABEL_SET, "source": fold_url}))
        records.append(SlideRecord(sample_id=sid, ref=f"{fold_url}#{tissue}", status=DONE, organ=tissue,
                                   label_set_id=LABEL_SET, shard=shard_path(sid), label_table=label_path(LABEL_SET, sid),
                                   cells=len(labels), patches=len(rows), nuclei=len(labels),
                                   labels={k: int(v) for k, v in labels["label"].value_counts().items()}))
        say(f"{tissue}: {len(rows)} images, {len(labels)} nuclei")
    return write_manifest(out, records, {"source": fold_url, "kind": "pannuke", "images": len(fold),
                                         "label_set_id": LABEL_SET, "seconds": round(time.perf_counter() - t0, 1)})
