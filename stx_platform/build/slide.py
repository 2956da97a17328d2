"""One slide of a build: read, label (label table per label set), cut patches (one Parquet shard
per slide), record. Pure of Ray; ``stx_platform.build.run`` distributes it."""

from __future__ import annotations

import posixpath
import time
import traceback

import pyarrow.parquet as pq

from stx_platform import storage
from stx_platform.build.manifest import (
    DONE,
    FAILED,
    SlideRecord,
    patches_done,
    shard_path,
    write_record,
)
from stx_platform.build.label_sets import label_sample
from stx_platform.build.quality import QualityConfig, QualityError, check_patches, check_sample
from stx_platform.build.review import REVIEW_DIR, write_review
from stx_platform.labels.config import LabelConfig
from stx_platform.patches.config import PatchConfig
from stx_platform.patches.cut import patches_for_sample
from stx_platform.patches.schema import parquet_options, schema_for
from stx_platform.progress import Progress


def write_shard(url: str, sample, config: PatchConfig, say: Progress) -> tuple[int, int]:
    """All patches of a sample into one Parquet file, written under a temporary name and moved
    into place only when complete. Returns (patches, nucleus instances)."""
    n_patches = n_nuclei = 0
    schema = schema_for(config)
    with storage.staged_output(url, ".parquet") as tmp:
        with pq.ParquetWriter(tmp, schema, **parquet_options()) as w:
            for table in patches_for_sample(sample, config, progress=say.fraction("patches")):
                w.write_table(table.replace_schema_metadata(schema.metadata))
                n_patches += table.num_rows
                n_nuclei += int(table.column("nucleus_count").to_numpy().sum())
    return n_patches, n_nuclei


def build_slide(ref: str, out: str, patch_config: PatchConfig, label_config: LabelConfig, db,
                previous: SlideRecord | None = None, cache_url: str | None = None,
                verbose: bool = False, quality: QualityConfig | None = None, review: bool = True,
                reader_options: dict | None = None) -> SlideRecord:
    """Label and patch one slide into ``out``; never raises for a bad slide: the record says why
    (a failed quality gate is named in ``gate``). Patches already cut with the same PatchConfig
    are kept (a label change never re-cuts). ``review`` writes the slide's review files
    (:mod:`stx_platform.build.review`); ``reader_options`` go to the reader (a bundle's
    ``he_image``, ``alignment``, ``assignment``)."""
    quality = quality or QualityConfig()
    from stx_platform.sources import read_sample, sample_id_of

    t0 = time.perf_counter()
    sid = sample_id_of(ref)
    say = Progress(sid if verbose else None)
    set_id = label_config.label_set_id(db.content_hash())
    rec = SlideRecord(sample_id=sid, ref=ref, status=FAILED, patch_config=patch_config.config_hash(),
                      label_set_id=set_id)
    try:
        sample = read_sample(ref, **(reader_options or {}))
        rec.sample_id, rec.organ, rec.cells = sample.sample_id, sample.organ, sample.n_cells
        rec.warnings, m = check_sample(sample, quality)
        rec.median_nucleus_area_um2, rec.empty_share = m["median_nucleus_area_um2"], m["empty_share"]
        say(f"labelling {sample.n_cells:,} cells")
        rec.label_table, res = label_sample(sample, out, label_config, db, cache_url)
        rec.labels = {k: int(v) for k, v in res.cells["label"].value_counts().items()}
        if review:
            say("writing review files")
            write_review(out, sample, res.cells)
            rec.review = posixpath.join(REVIEW_DIR, sample.sample_id)
        rec.shard = shard_path(sample.sample_id)
        if patches_done(out, previous, rec.patch_config):
            rec.patches, rec.nuclei = previous.patches, previous.nuclei
            say("patches already cut with this config")
        else:
            say("cutting patches")
            rec.patches, rec.nuclei = write_shard(storage.join(out, rec.shard), sample, patch_config, say)
        check_patches(rec.patches, quality)
        rec.status = DONE
    except Exception as e:  # noqa: BLE001 - a bad slide is recorded, the build goes on
        rec.status = FAILED
        rec.error = f"{type(e).__name__}: {e}"
        rec.gate = e.gate if isinstance(e, QualityError) else ""
        if not isinstance(e, (ValueError, OSError)):
            rec.error += "\n" + "".join(traceback.format_exception(e)[-3:])
    rec.seconds = round(time.perf_counter() - t0, 2)
    write_record(out, rec)
    return rec
