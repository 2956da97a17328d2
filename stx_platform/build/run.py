"""The build on Ray: slides listed from a source URL, each labelled and patched by a Ray Data
map (one task per slide with declared CPUs), shards and label tables written to the output
URL, a manifest and a summary at the end. Library code: the caller owns ``ray.init``."""

from __future__ import annotations

import time
from collections import Counter

from stx_platform import capacity, storage
from stx_platform.build.manifest import (
    DONE,
    FAILED,
    SlideRecord,
    is_done,
    read_records,
    write_manifest,
    write_record,
)
from stx_platform.build.label_sets import write_label_config
from stx_platform.build.quality import QualityConfig, recheck
from stx_platform.build.slide import build_slide
from stx_platform.labels.config import LabelConfig
from stx_platform.patches.config import PatchConfig


#: Tries per slide before a slide whose worker dies (a native crash, out of memory) is failed.
MAX_ATTEMPTS = 2


def attempts_url(out: str, sample_id: str) -> str:
    return storage.join(out, "manifest", f".{sample_id}.attempts")


class SlideBuilder:
    """Builds slides with one configuration (its marker database loaded once).

    A Ray task whose worker dies mid-slide (a crash, out of memory, its node lost) is given the
    slide again by Ray Data, forever; so each start is counted in ``manifest/.<id>.attempts``
    first, and a slide started ``max_attempts`` times already is recorded as failed instead of
    being tried again."""

    def __init__(self, out: str, patch_config: dict, label_config: dict, previous: dict, quality: dict | None = None,
                 max_attempts: int = MAX_ATTEMPTS, review: bool = True, reader_options: dict | None = None):
        from stx_platform.labels.markers import load_markers

        self.out = out
        self.max_attempts, self.review, self.reader_options = max_attempts, review, reader_options or {}
        self.quality = QualityConfig.model_validate(quality or {})
        self.patch_config = PatchConfig.model_validate(patch_config)
        self.label_config = LabelConfig.model_validate(label_config)
        self.db = load_markers(self.label_config.markers)
        self.previous = previous

    def __call__(self, row: dict) -> dict:
        sid = row["sample_id"]
        url = attempts_url(self.out, sid)
        tried = int(storage.read_bytes(url)) if storage.exists(url) else 0
        if tried >= self.max_attempts:
            rec = SlideRecord(sample_id=sid, ref=row["ref"], status=FAILED, patch_config=self.patch_config.config_hash(),
                              label_set_id=self.label_config.label_set_id(self.db.content_hash()),
                              error=f"WorkerDied: the worker building this slide died {tried} time(s) (a native "
                                    "crash or out of memory; see the Ray worker logs); not tried again")
            write_record(self.out, rec)
        else:
            storage.write_bytes(url, str(tried + 1).encode())
            prev = self.previous.get(sid)
            rec = build_slide(row["ref"], self.out, self.patch_config, self.label_config, self.db,
                              previous=SlideRecord(**prev) if prev else None, quality=self.quality,
                              review=self.review, reader_options=self.reader_options)
        storage.remove(url)
        return {"record": rec.to_json()}


def build_row(row: dict, **settings) -> dict:
    """Ray Data map function: one slide (``row``) built with ``settings`` (:class:`SlideBuilder`'s)."""
    return SlideBuilder(**settings)(row)


def slide_workers(slides: int, cpus_per_slide: float, max_parallel: int | None = None) -> int:
    """Slides built at once: ``max_parallel`` when given, else as many as the cluster's CPUs
    hold (counting what its autoscaler may add), never more than there are slides."""
    if max_parallel is None:
        max_parallel = int(capacity.capacity().get("CPU", 0) // cpus_per_slide)
    return max(1, min(slides, max_parallel))


def run_build(source: str, out: str, patch_config: PatchConfig, label_config: LabelConfig,
              cpus_per_slide: float = 1.0, max_parallel: int | None = None, print_fn=print,
              quality: QualityConfig | None = None, max_attempts: int = MAX_ATTEMPTS, review: bool = True,
              reader_options: dict | None = None) -> dict:
    """Build (or resume) a dataset; returns the manifest document. On an autoscaling cluster
    the slide workers are asked for up front and the request withdrawn at the end."""
    import ray

    from stx_platform.labels.markers import load_markers
    from stx_platform.sources import sample_id_of, sample_refs

    t0 = time.perf_counter()
    other: dict[str, str] = {}
    refs = sample_refs(source, skipped=other)
    if other:
        kinds = ", ".join(f"{t}: {n}" for t, n in sorted(Counter(other.values()).items()))
        print_fn(f"build: skipped {len(other)} non-Xenium sample(s) in {source} ({kinds}): no per-cell "
                 "expression or nucleus segmentation")
    stale = storage.remove_stale_staging(out)
    if stale:
        print_fn(f"build: removed {len(stale)} partial file(s) that a killed run left in {out}")
    db = load_markers(label_config.markers)
    set_id = label_config.label_set_id(db.content_hash())
    phash = patch_config.config_hash()
    previous = read_records(out)
    rows, skipped = [], []
    quality = quality or QualityConfig()
    for ref in refs:
        sid = sample_id_of(ref)
        if is_done(out, previous.get(sid), phash, set_id):
            skipped.append(recheck(previous[sid], quality))
        else:
            rows.append({"ref": ref, "sample_id": sid})
            storage.remove(attempts_url(out, sid))      # a new build gives every slide its tries again
    regated = [r for r in skipped if r.status != DONE]
    print_fn(f"build: {len(refs)} slide(s) from {source} -> {out}; label set {set_id}, patch config {phash}; "
             f"{len(skipped) - len(regated)} already done, {len(rows)} to do"
             + (f", {len(regated)} built earlier failing this build's quality gates" if regated else ""))
    for rec in regated:
        write_record(out, rec)
        print_fn(f"  {rec.sample_id}: FAILED: {rec.error}")
    records = list(skipped)
    if rows:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # one line per finished slide instead (below)
        ctx.print_on_execution_start = False
        workers = slide_workers(len(rows), cpus_per_slide, max_parallel)
        asked = capacity.request([{"CPU": cpus_per_slide}] * workers)
        if asked:
            print_fn(f"build: asked the autoscaler for {workers} slide worker(s) x {cpus_per_slide:g} CPU")
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        # one task per slide, up to `workers` at once: a queued slide starts on the first free CPUs,
        # never behind a long slide (tasks, not an actor pool: Ray 2.60 logs an error line for
        # every restartable actor whose constructor arguments Ray Data puts in the object store)
        ds = ds.map(build_row, num_cpus=cpus_per_slide, compute=ray.data.TaskPoolStrategy(size=workers),
                    fn_kwargs={"out": out, "patch_config": patch_config.model_dump(),
                               "label_config": label_config.model_dump(),
                               "previous": {k: v.to_json() for k, v in previous.items()},
                               "quality": quality.model_dump(), "max_attempts": max_attempts, "review": review,
                               "reader_options": reader_options})
        try:
            for i, row in enumerate(ds.iter_rows(), 1):
                rec = SlideRecord(**row["record"])
                records.append(rec)
                what = (f"{rec.patches} patches, {rec.nuclei} nuclei, {rec.cells} cells {rec.labels}"
                        if rec.status == DONE else f"FAILED: {rec.error.splitlines()[0]}")
                what += "".join(f"; warning: {w}" for w in rec.warnings)
                print_fn(f"  [{i}/{len(rows)}] {rec.sample_id}: {what} ({rec.seconds:.1f} s)")
        finally:
            if asked:
                capacity.request([])
    build = {"source": source, "label_set_id": set_id, "label_config": label_config.model_dump(),
             "patch_config_hash": phash, "patch_config": patch_config.model_dump(),
             "quality": quality.model_dump(),
             "markers_hash": db.content_hash(), "seconds": round(time.perf_counter() - t0, 1)}
    write_label_config(storage.join(out, "labels", set_id), label_config)
    doc = write_manifest(out, records, build)
    print_fn(f"build: {doc['done']} done, {doc['failed']} failed -> {storage.join(out, 'manifest.json')}")
    return doc
