"""The build manifest: one JSON record per slide under ``<out>/manifest/<sample_id>.json``
(written atomically when the slide is finished or has failed), gathered into
``<out>/manifest.json`` at the end of a build. A slide is done only when its record says so and
its shard exists; a crash leaves no record, so the next run redoes that slide."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from stx_platform import storage
from stx_platform.labels.table import label_table_url

DONE, FAILED = "done", "failed"


def shard_path(sample_id: str) -> str:
    """A slide's patch shard, relative to the build root."""
    return f"patches/{sample_id}.parquet"


def label_path(label_set_id: str, sample_id: str) -> str:
    """A slide's label table for a label set, relative to the build root."""
    return label_table_url("labels", label_set_id, sample_id)


@dataclass
class SlideRecord:
    sample_id: str
    ref: str
    status: str
    organ: str = ""
    patch_config: str = ""          # PatchConfig hash
    label_set_id: str = ""
    shard: str = ""                 # relative to the build root
    label_table: str = ""           # relative to the build root
    review: str = ""                # folder of the review files (GeoJSON, h5ad, picture), relative
    cells: int = 0
    patches: int = 0
    nuclei: int = 0                 # nucleus instances over all patches
    labels: dict = field(default_factory=dict)  # class -> cells
    error: str = ""
    gate: str = ""                  # the quality gate a failed slide did not pass
    warnings: list = field(default_factory=list)
    median_nucleus_area_um2: float | None = None   # the quality gates' measurements (None: not measured)
    empty_share: float | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def record_url(out: str, sample_id: str) -> str:
    return storage.join(out, "manifest", f"{sample_id}.json")


def write_record(out: str, rec: SlideRecord) -> None:
    storage.write_json(record_url(out, rec.sample_id), rec.to_json())


def read_records(out: str) -> dict[str, SlideRecord]:
    folder = storage.join(out, "manifest")
    recs = {}
    for name in storage.listdir(folder):
        if name.endswith(".json") and not name.startswith("."):   # not a staging file
            d = json.loads(storage.read_bytes(storage.join(folder, name)))
            recs[d["sample_id"]] = SlideRecord(**d)
    return recs


def patches_done(out: str, rec: SlideRecord | None, patch_config: str) -> bool:
    return (rec is not None and rec.status == DONE and rec.patch_config == patch_config
            and storage.exists(storage.join(out, rec.shard)))


def is_done(out: str, rec: SlideRecord | None, patch_config: str, label_set_id: str) -> bool:
    return (patches_done(out, rec, patch_config) and rec.label_set_id == label_set_id
            and storage.exists(storage.join(out, rec.label_table)))


def done_slides(out: str) -> list[dict]:
    """The records of ``<out>/manifest.json`` whose slide is done, in manifest order."""
    doc = storage.read_json(storage.join(out, "manifest.json"))
    return [s for s in doc.get("slides", []) if s.get("status") == DONE and s.get("shard")]


def write_manifest(out: str, records: list[SlideRecord], build: dict) -> dict:
    """``<out>/manifest.json``: the build's settings and every slide's record."""
    doc = {**build, "slides": [r.to_json() for r in sorted(records, key=lambda r: r.sample_id)],
           "done": sum(r.status == DONE for r in records), "failed": sum(r.status == FAILED for r in records)}
    storage.write_json(storage.join(out, "manifest.json"), doc)
    return doc
