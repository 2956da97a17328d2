"""Label sets of a built dataset: one slide's labels written under ``labels/<set id>/``, and a new
label config applied to every built slide (Ray tasks, one per slide) without touching patches.

Labelling goes through the dataset's stage caches (``<out>/_cache``), so a config that changes only
voting thresholds reads each slide's cached DEGs and never reclusters; a new resolution reclusters
once per slide and is cached for the next config that uses it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from stx_platform import storage
from stx_platform.build.manifest import done_slides, label_path
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.pipeline import LabelResult, label_expression
from stx_platform.labels.table import write_label_table

CONFIG_FILE = "label_config.yaml"


def cache_url(out: str) -> str:
    """The stage caches of a built dataset."""
    return storage.join(out, "_cache")


def label_config_yaml(config: LabelConfig, header: str = "") -> str:
    """A YAML document with ``config`` as its ``labels:`` section (build, label and train read
    it), after ``header`` as comment lines."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + "labels:\n" + "".join(f"  {line}\n" for line in config.to_yaml().splitlines())


def write_label_config(folder: str, config: LabelConfig) -> None:
    """``<folder>/label_config.yaml``: the settings that produced a label set."""
    storage.write_bytes(storage.join(folder, CONFIG_FILE), label_config_yaml(config).encode())


def label_sample(sample, out: str, config: LabelConfig, db, cache: str | None = None) -> tuple[str, LabelResult]:
    """Label a read sample and write its table into the dataset at ``out``; returns (the table's
    path relative to ``out``, the result)."""
    set_id = config.label_set_id(db.content_hash())
    res = label_expression(sample.expression, sample.organ, config, db, sample_id=sample.sample_id,
                           cache=cache or cache_url(out))
    rel = label_path(set_id, sample.sample_id)
    write_label_table(storage.join(out, rel), res.to_arrow())
    return rel, res


@dataclass
class SlideLabels:
    """What labelling one slide for a label set did."""

    sample_id: str
    reclustered: bool       # Leiden ran (its stage was not cached)
    cached: bool            # the table already existed; nothing was computed
    seconds: float
    labels: dict            # class -> cells


def label_built_slide(slide: dict, out: str, config: LabelConfig, db) -> SlideLabels:
    """The label table of one built slide (a manifest record) for ``config``; skipped when present."""
    from stx_platform.sources import read_sample

    t0 = time.perf_counter()
    set_id = config.label_set_id(db.content_hash())
    if storage.exists(storage.join(out, label_path(set_id, slide["sample_id"]))):
        return SlideLabels(slide["sample_id"], False, True, time.perf_counter() - t0, {})
    try:
        _, res = label_sample(read_sample(slide["ref"]), out, config, db)
    except Exception as e:
        raise ValueError(f"labelling slide {slide['sample_id']} ({slide['ref']}) for label set "
                         f"{set_id}: {type(e).__name__}: {e}") from e
    counts = {str(k): int(v) for k, v in res.cells["label"].value_counts().items()}
    # the leiden stage is looked up only when the DEGs were not cached; a miss means Leiden ran
    return SlideLabels(slide["sample_id"], res.cache_hits.get("leiden") is False, False,
                       time.perf_counter() - t0, counts)


@dataclass
class LabelSetResult:
    label_set_id: str
    slides: list[SlideLabels]
    seconds: float

    @property
    def reclustered(self) -> int:
        return sum(s.reclustered for s in self.slides)

    @property
    def computed(self) -> int:
        return sum(not s.cached for s in self.slides)

    def to_json(self) -> dict:
        return {"label_set_id": self.label_set_id, "slides": [asdict(s) for s in self.slides],
                "reclustered": self.reclustered, "computed": self.computed, "seconds": round(self.seconds, 2)}


def add_label_set(out: str, config: LabelConfig, db=None, *, cpus_per_slide: float = 1.0,
                  use_ray: bool = True) -> LabelSetResult:
    """Label every done slide of the dataset at ``out`` with ``config`` (one Ray task per slide
    when ``use_ray``; in this process otherwise). Tables already present are kept."""
    from stx_platform.labels.markers import load_markers

    t0 = time.perf_counter()
    db = db if db is not None else load_markers(config.markers)
    set_id = config.label_set_id(db.content_hash())
    slides = done_slides(out)
    if use_ray and slides:
        import ray

        # DEFAULT: not inside the caller's placement group (a Tune trial holds a tiny one)
        task = ray.remote(num_cpus=cpus_per_slide, max_retries=1, scheduling_strategy="DEFAULT")(label_built_slide)
        db_ref, cfg_ref = ray.put(db), ray.put(config)
        results = ray.get([task.remote(s, out, cfg_ref, db_ref) for s in slides])
    else:
        results = [label_built_slide(s, out, config, db) for s in slides]
    folder = storage.join(out, "labels", set_id)
    if not storage.exists(storage.join(folder, CONFIG_FILE)):
        write_label_config(folder, config)
    return LabelSetResult(set_id, results, time.perf_counter() - t0)
