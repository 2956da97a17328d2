"""The label table: the data contract between labelling and everything that uses labels.

One Parquet file per (label set, slide) at ``<root>/<label_set_id>/<sample_id>.parquet``,
one row per cell: its id, cluster, class and the cluster's evidence. The file's schema
metadata holds the sample id, the label-set id, the config (JSON) and the marker database hash.
Patches never carry labels; they are joined by (sample id, cell id) at training time.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stx_platform import storage
from stx_platform.taxonomy import LABEL_CLASSES

LABEL_SCHEMA = pa.schema([
    pa.field("cell_id", pa.string(), nullable=False),
    pa.field("cluster", pa.int32(), nullable=False),
    pa.field("label", pa.dictionary(pa.int8(), pa.string()), nullable=False),
    pa.field("votes_epithelial", pa.float32()),
    pa.field("votes_inflammatory", pa.float32()),
    pa.field("votes_connective", pa.float32()),
    pa.field("votes_unknown", pa.float32()),
    pa.field("cancer_overlap", pa.float32()),
    pa.field("fallback", pa.bool_()),
])


def label_table_url(root: str, label_set_id: str, sample_id: str) -> str:
    return storage.join(root, label_set_id, f"{sample_id}.parquet")


def to_arrow(cells: pd.DataFrame, meta: dict) -> pa.Table:
    """``cells`` with the schema's columns -> an Arrow table with the schema and ``meta``."""
    bad = set(cells["label"]) - set(LABEL_CLASSES)
    if bad:
        raise ValueError(f"labels outside {LABEL_CLASSES}: {sorted(bad)}")
    cols = {}
    for f in LABEL_SCHEMA:
        v = cells[f.name]
        if f.name == "label":
            cols[f.name] = pa.array(v.astype(str)).dictionary_encode().cast(f.type)
        else:
            cols[f.name] = pa.array(v, type=f.type)
    md = {k: json.dumps(v) for k, v in meta.items()}
    return pa.table(cols, schema=LABEL_SCHEMA.with_metadata(md))


def write_label_table(url: str, table: pa.Table) -> None:
    with storage.staged_output(url, ".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_label_table(url: str) -> tuple[pd.DataFrame, dict]:
    """(cells frame indexed by cell_id, metadata dict)."""
    with storage.open_file(url, "rb") as f:
        t = pq.read_table(f)
    meta = {k.decode(): json.loads(v) for k, v in (t.schema.metadata or {}).items() if not k.startswith(b"pandas")}
    df = t.to_pandas()
    df["label"] = df["label"].astype(str)
    return df.set_index("cell_id"), meta
