"""The ``stx`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from stx_platform import __version__
from stx_platform.errors import SampleError

DEFAULT_HEST_OUT = "stx-data/hest"
DEFAULT_PANNUKE_OUT = "stx-data/pannuke"
#: Options that name data locations, with what an unset one stands for (checked in Ray jobs).
LOCATION_OPTIONS = {"source": DEFAULT_HEST_OUT, "validation": DEFAULT_PANNUKE_OUT, "out": None, "dataset": None,
                    "storage": None, "checkpoint": None, "pannuke": None, "pannuke_out": None,
                    "pannuke_train": None, "samples": None}


def _table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    line = lambda vals: "  ".join(str(v).rjust(w) if isinstance(v, (int, float)) else str(v).ljust(w)  # noqa: E731
                                  for v, w in zip(vals, widths))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line([r.get(c, "") for c in cols]) for r in rows])


def cmd_synth(args) -> int:
    import os

    from stx_platform.organs import canonical_organ
    from stx_platform.synth.generate import generate_set, generate_set_on_ray, plan
    from stx_platform.synth.organs import RECIPES

    organs = tuple(args.organs) if args.organs else None
    for o in organs or ():
        if canonical_organ(o) not in RECIPES:
            print(f"error: unknown organ {o!r}; known: {', '.join(RECIPES)}", file=sys.stderr)
            return 2
    specs = plan(args.slides, args.seed, organs, args.cells)
    t0 = time.time()
    print(f"stx synth: {len(specs)} slide(s), ~{args.cells} cells each, layout {args.layout}, -> {args.out}",
          flush=True)
    done = []

    def on_done(r):
        done.append(r)
        print(f"  [{len(done)}/{len(specs)}] {r['id']} {r['organ']:<10} {r['cells']:>7} cells "
              f"{r['transcripts']:>10} transcripts  {r['width_px']}x{r['height_px']} px @ {r['mpp']} um/px "
              f"({r['seconds']} s)", flush=True)

    if args.address or os.environ.get("RAY_ADDRESS"):
        with _ray_session(args):
            print("  one Ray task per slide on the Ray cluster", flush=True)
            results = generate_set_on_ray(args.out, specs, args.layout, on_done=on_done)
    else:
        results = generate_set(args.out, specs, args.layout, args.workers, on_done)
    rows = [{"sample": r["id"], "organ": r["organ"], "format": r["style"], "cells": r["cells"],
             "transcripts": r["transcripts"], **{k[:5]: v for k, v in r["classes"].items()}} for r in results]
    print()
    print(_table(rows, list(rows[0])))
    print(f"\nwrote {len(results)} slide(s) to {args.out} in {time.time() - t0:.1f} s")
    if args.layout == "hest":
        print(f"ground-truth pictures: {args.out}/thumbnails/<id>_truth.png")
        print(f"inspect one:           stx inspect '{args.out}#{results[0]['id']}'")
    else:
        print(f"inspect one:           stx inspect {args.out}/{results[0]['id']}")
    if args.pannuke_out:
        return cmd_synth_pannuke(build_parser().parse_args(["synth-pannuke", "--out", args.pannuke_out,
                                                            "--seed", str(args.seed)]))
    return 0


def cmd_synth_pannuke(args) -> int:
    from stx_platform.synth.pannuke import write_pannuke_fold

    t0 = time.time()
    print(f"stx synth-pannuke: {args.n} images -> {args.out}", flush=True)
    res = write_pannuke_fold(args.out, args.n, args.seed, progress=lambda m: print(f"  {m}", flush=True))
    print(f"wrote {res['images']} images ({', '.join(res['tissues'])}); nuclei per class: {res['nuclei']}")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def _bundle_options(args, source: str) -> dict:
    """``--he-image`` / ``--alignment`` / ``--assignment`` for a source that is one Xenium bundle."""
    from stx_platform.sources import is_xenium_bundle

    opts = {k: v for k, v in (("he_image", args.he_image), ("alignment", args.alignment)) if v}
    if getattr(args, "assignment", None) == "nucleus":
        opts["assignment"] = "nucleus"
    if opts and ("#" in source or not is_xenium_bundle(source)):
        raise ValueError(f"--he-image, --alignment and --assignment nucleus name a Xenium bundle's files; {source} is "
                         "not one Xenium bundle folder")
    return opts


def _bundle_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--he-image", help="Xenium bundle: the H&E OME-TIFF (a name in the bundle or a path/URL; "
                                      "default: the one *he_image.ome.tif)")
    p.add_argument("--alignment", help="Xenium bundle: the 3 x 3 H&E -> morphology alignment CSV (default: the "
                                       "one *_imagealignment.csv)")


def cmd_inspect(args) -> int:
    from stx_platform.sources import read_sample

    if "#" in args.sample:
        if args.he_image or args.alignment:
            raise ValueError("--he-image and --alignment are for Xenium bundles; a HEST sample has its own")
        kwargs = {"assignment": args.assignment}
    elif args.assignment == "polygon":
        raise ValueError("--assignment polygon is for HEST samples; a Xenium bundle counts by cell_id or nucleus")
    else:  # a Xenium bundle: the whole cell (its matrix) or its nucleus
        kwargs = _bundle_options(args, args.sample)
    s = read_sample(args.sample, **kwargs)
    for k, v in s.summary().items():
        print(f"{k:>28}: {v}")
    if s.ground_truth is not None:
        print(f"{'ground truth classes':>28}: {s.ground_truth['class'].value_counts().to_dict()}")
    return 0


def cmd_list(args) -> int:
    from stx_platform.sources import list_samples

    refs = list_samples(args.url)
    for r in refs:
        print(r)
    if not refs:
        print(f"no samples under {args.url}", file=sys.stderr)
        return 1
    return 0


def _label_config(args, overrides):
    """LabelConfig from --config, the overrides and the marker-file options."""
    from stx_platform.labels.config import LabelConfig

    config = LabelConfig.load(args.config, overrides)
    for name in ("panglaodb", "cellmarker", "cancersea"):
        if getattr(args, name, None):
            setattr(config.markers, name, getattr(args, name))
    return config


def _label_setup(args):
    from stx_platform.labels.markers import load_markers

    config = _label_config(args, args.set or ())
    return config, load_markers(config.markers)


def cmd_label(args) -> int:
    from stx_platform import storage
    from stx_platform.build.label_sets import write_label_config
    from stx_platform.labels.pipeline import label_expression
    from stx_platform.labels.table import label_table_url, write_label_table
    from stx_platform.progress import Progress
    from stx_platform.sources import sample_id_of
    from stx_platform.sources.cells_only import cell_refs, read_cells

    config, db = _label_setup(args)
    set_id = config.label_set_id(db.content_hash())
    refs = cell_refs(args.sample)
    cache = args.cache or storage.join(args.out, "_cache")
    print(f"stx label: {len(refs)} sample(s), label set {set_id} -> {storage.join(args.out, set_id)}", flush=True)
    for ref in refs:
        say = Progress(sample_id_of(ref))
        sample = read_cells(ref, organ=args.organ)
        say(f"{sample.n_cells:,} cells x {sample.expression.n_vars} genes, organ {sample.organ}")
        for w in getattr(sample, "warnings", ()):
            say(f"warning: {w}")
        res = label_expression(sample.expression, sample.organ, config, db, sample_id=sample.sample_id,
                               cache=cache, progress=say)
        url = label_table_url(args.out, set_id, sample.sample_id)
        write_label_table(url, res.to_arrow())
        counts = res.cells["label"].value_counts().to_dict()
        hits = ", ".join(k for k, v in res.cache_hits.items() if v) or "none"
        say(f"{len(res.clusters)} clusters -> {counts}; cache hits: {hits}; labelled in {res.timings['total']:.2f} s")
    write_label_config(storage.join(args.out, set_id), config)
    print(f"label tables: {storage.join(args.out, set_id)}/<sample>.parquet; config: label_config.yaml")
    return 0


def cmd_label_eval(args) -> int:
    from stx_platform import storage
    from stx_platform.labels.compare import METHOD_ORDER, compare
    from stx_platform.labels.evaluate import confusion_figure, table3
    from stx_platform.sources.cells_only import cell_refs, read_cells
    from stx_platform.viz import figure_png

    config, db = _label_setup(args)
    methods = tuple(args.methods or METHOD_ORDER)
    refs = cell_refs(args.samples)
    print(f"stx label-eval: {len(refs)} sample(s), methods {', '.join(methods)}", flush=True)
    samples = [read_cells(r, organ=args.organ) for r in refs]
    results, per_sample = compare(samples, config, db, methods, args.cache)
    md = table3(results, list(methods))
    n = next(iter(results.values()))["n_cells"]
    header = (f"Label evaluation on {len(samples)} slide(s), {n:,} cells with a scored ground-truth class "
              f"(ground-truth Unknown excluded; predicted Unknown counts as wrong); markers: "
              f"{'embedded default' if config.markers.embedded else config.markers.model_dump(exclude_none=True)}\n\n")
    print()
    print(md)
    storage.write_bytes(storage.join(args.out, "confusion.png"), figure_png(confusion_figure(results, list(methods))))
    storage.write_bytes(storage.join(args.out, "table3.md"), (header + md + "\n").encode())
    storage.write_bytes(storage.join(args.out, "per_sample.csv"), per_sample.to_csv(index=False).encode())
    print(f"\nwrote {args.out}/table3.md, confusion.png, per_sample.csv")
    return 0


def cmd_markers(args) -> int:
    from stx_platform import storage

    config, db = _label_setup(args)
    md = db.report.to_markdown(max_dropped=args.max_dropped)
    summary = (f"marker database {db.content_hash()}: {len(db)} entries, {len(db.genes)} genes, "
               f"{len(db.cancer_genes)} cancer-associated genes "
               f"({'embedded default' if config.markers.embedded else 'from your files'})")
    print(summary)
    print()
    print(md)
    if args.out:
        storage.write_bytes(args.out, (f"# {summary}\n\n{md}\n").encode())
        print(f"\nwrote {args.out}")
    if args.mapping:
        names = (db.table.groupby(["source", "cell_type", "coarse"]).agg(genes=("gene", "nunique"))
                 .reset_index().rename(columns={"coarse": "class"}))
        storage.write_bytes(args.mapping, names.to_csv(index=False).encode())
        print(f"wrote {args.mapping}: {len(names)} cell-type names and the class each maps to")
    return 0


def _section_overrides(sets: list[str] | None, section: str) -> list[str]:
    """``--set patches.stride=200`` goes to the patch config; ``--set labels.top_n=8`` and keys
    without a section go to the label config."""
    from stx_platform.config_io import split_overrides

    return split_overrides(sets, section, default="labels")


@contextlib.contextmanager
def _ray_session(args, dashboard: bool = False):
    """The command's Ray (see :func:`stx_platform.ray_session.ray_session`): ``--address`` /
    ``RAY_ADDRESS``, else a private local Ray with ``--num-cpus``. Worker logs stay on the
    workers: progress comes back through the jobs' own reporting."""
    from stx_platform.ray_session import ray_session

    with ray_session(args.address, getattr(args, "num_cpus", None), dashboard=dashboard):
        yield


def _source(source: str | None) -> str:
    """The slides to build: ``source``, else the embedded synthetic default (generated when missing)."""
    if source is not None:
        return source
    from stx_platform.sources import list_samples

    if not list_samples(DEFAULT_HEST_OUT):
        print(f"no source given and {DEFAULT_HEST_OUT} is empty: generating the embedded synthetic default there",
              flush=True)
        cmd_synth(build_parser().parse_args(["synth", "--out", DEFAULT_HEST_OUT]))
    return DEFAULT_HEST_OUT


def cmd_build(args) -> int:
    import os

    from stx_platform.build.quality import QualityConfig
    from stx_platform.build.run import run_build
    from stx_platform.build.summary import log_to_mlflow, summarise
    from stx_platform.config_io import load_config
    from stx_platform.patches.config import PatchConfig

    label_config = _label_config(args, _section_overrides(args.set, "labels"))
    patch_config = load_config(PatchConfig, args.config, "patches", _section_overrides(args.set, "patches"))
    quality = load_config(QualityConfig, args.config, "quality", _section_overrides(args.set, "quality"))

    source = _source(args.source)
    reader_options = _bundle_options(args, source)
    with _ray_session(args):
        manifest = run_build(source, args.out, patch_config, label_config, cpus_per_slide=args.cpus_per_slide,
                             max_parallel=args.max_parallel, quality=quality, max_attempts=args.max_attempts,
                             review=not args.no_review, reader_options=reader_options)
    summary = summarise(args.out, manifest)
    print()
    print(summary["markdown"])
    print(f"dataset: {args.out}  (patches/<sample>.parquet, labels/{manifest['label_set_id']}/, manifest.json)")
    print(f"summary: {summary['folder']}/summary.md" + (f", {summary['picture']}" if summary["picture"] else ""))
    uri = args.mlflow or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        run_id = log_to_mlflow(args.out, manifest, summary, uri)
        print(f"mlflow: run {run_id} at {uri}")
    return 0 if manifest["failed"] == 0 else 3


def cmd_review(args) -> int:
    from stx_platform import storage
    from stx_platform.build.manifest import DONE, read_records
    from stx_platform.build.review import review_paths

    records = read_records(args.dataset)
    rec = records.get(args.sample)
    if rec is None:
        raise ValueError(f"{args.dataset}: no slide {args.sample!r} in this build (slides: "
                         f"{', '.join(sorted(records)) or 'none'})")
    print(f"{rec.sample_id} ({rec.organ}): {rec.status}; {rec.cells:,} cells {rec.labels}, {rec.patches} patches")
    for w in rec.warnings:
        print(f"warning: {w}")
    if rec.status != DONE:
        print(f"failed{' the quality gate ' + rec.gate if rec.gate else ''}: {rec.error.splitlines()[0]}")
        return 3
    if not rec.review:
        print("no review files: the slide was built with --no-review")
        return 3
    paths = review_paths(args.dataset, rec.sample_id)
    hints = {"geojson": "QuPath: File > Import objects (or drag onto the slide)",
             "h5ad": "scanpy: sc.read_h5ad(...); obs['stx_label'], obs['stx_cluster'], obsm['spatial']",
             "thumbnail": "the slide with every nucleus outlined in its label's colour"}
    for key, url in paths.items():
        print(f"  {url}{'' if storage.exists(url) else ' (missing)'}  - {hints[key]}")
    return 0


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}f}"


def _validation_fold(url: str | None) -> str:
    """The fold to validate on; the synthetic default is generated when missing."""
    if url:
        return url
    from stx_platform import storage

    if not storage.exists(storage.join(DEFAULT_PANNUKE_OUT, "images.npy")):
        print(f"no validation fold given and {DEFAULT_PANNUKE_OUT} is empty: generating the synthetic PanNuke "
              "fold there", flush=True)
        cmd_synth_pannuke(build_parser().parse_args(["synth-pannuke", "--out", DEFAULT_PANNUKE_OUT]))
    return DEFAULT_PANNUKE_OUT


def _print_epoch(total: int):
    def show(ev: dict) -> None:
        if "error" in ev:
            print(f"  worker failure (a restart from the last checkpoint follows if retries are left): "
                  f"{ev['error']}", flush=True)
            return
        m = ev["metrics"]
        print(f"  epoch {int(m.get('epoch', 0))}/{total}  loss {_fmt(m.get('loss'))}  "
              f"val mPQ {_fmt(m.get('val_mPQ'))}  bPQ {_fmt(m.get('val_bPQ'))}  F1 {_fmt(m.get('val_f1'))}  "
              f"macro F1 {_fmt(m.get('val_macro_f1'))}  ({_fmt(m.get('epoch_s'), 1)} s train at "
              f"{_fmt(m.get('samples_per_s'), 1)} samples/s, {_fmt(m.get('val_s'), 1)} s validation)", flush=True)
    return show


def _train_config(args, overrides, cpu_preset: str = "tiny"):
    """TrainConfig from --preset (auto: cellvit when the Ray cluster has GPUs or its autoscaler may
    add them, else ``cpu_preset``), the config file's train section and the overrides. Needs a Ray
    session."""
    from stx_platform.capacity import capacity
    from stx_platform.config_io import read_section
    from stx_platform.training.config import TrainConfig

    preset = args.preset
    if preset == "auto":
        preset = read_section(args.config, "train").get("preset")
    if preset in (None, "auto"):
        preset = "cellvit" if capacity().get("GPU", 0) > 0 else cpu_preset
        why = "GPUs in the Ray cluster or its autoscaler" if preset == "cellvit" else "no GPU in the Ray cluster"
        print(f"preset {preset} ({why}; choose with --preset)", flush=True)
    return TrainConfig.load(args.config, overrides, preset=preset)


def _config_label_set(url: str | None) -> str | None:
    """The label set id of a config file's ``labels:`` section (best_labels.yaml of a sweep), or None."""
    import yaml

    from stx_platform import storage
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.markers import load_markers

    if not url:
        return None
    doc = yaml.safe_load(storage.read_bytes(url)) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), dict):
        return None
    config = LabelConfig.model_validate(doc["labels"])
    set_id = config.label_set_id(load_markers(config.markers).content_hash())
    print(f"labels: label set {set_id} from the labels section of {url}", flush=True)
    return set_id


def cmd_train(args) -> int:
    from stx_platform.capacity import capacity
    from stx_platform.config_io import apply_overrides, split_overrides
    from stx_platform.training.config import TrainConfig
    from stx_platform.training.run import read_run_info, run_training, uses_gpu

    overrides = split_overrides(args.set, "train", default="train")
    with _ray_session(args):
        if args.resume:
            info = read_run_info(args.storage, args.name)
            cfg = TrainConfig.model_validate(apply_overrides(dict(info["train"]), overrides))
            dataset, validation, label_set = info["dataset"], info["validation"], info["label_set_id"] or None
            sample_ids = info.get("sample_ids")
        else:
            sample_ids = None
            cfg = _train_config(args, overrides)
            dataset, validation = args.dataset, _validation_fold(args.validation)
            label_set = args.label_set or _config_label_set(args.config)
        lo, hi = cfg.ingest_pool(uses_gpu(cfg, capacity()))
        print(f"stx train: {cfg.model} ({cfg.preset}), {cfg.epochs} epoch(s) of "
              f"{cfg.samples_per_epoch or 'all'} patches, batch {cfg.batch_size} x {cfg.num_workers} worker(s), "
              f"ingest {lo}-{hi} actor(s) x {cfg.ingest_cpus:g} CPU; dataset {dataset}, validation {validation}",
              flush=True)
        res = run_training(dataset, validation, cfg, storage_url=args.storage, name=args.name, resume=args.resume,
                           label_set_id=label_set, mlflow_uri=args.mlflow, on_epoch=_print_epoch(cfg.epochs),
                           sample_ids=sample_ids, register_model=args.register_model or None)
    b = res.best_metrics
    print(f"\ntrained {res.epochs} epoch(s) in {res.seconds:.0f} s; run {res.run_dir}")
    print(f"best checkpoint ({cfg.metric} {_fmt(b.get('val_' + cfg.metric))}): {res.best_checkpoint}")
    print(f"mlflow: run {res.mlflow_run_id} at {res.tracking_uri}  (view: mlflow ui --backend-store-uri "
          f"{res.tracking_uri})")
    if res.model is not None:
        _print_model(res.model.model_uri, res.model.registered, res.model.note)
    print(f"next:   stx evaluate --checkpoint {res.run_dir} --pannuke {validation}")
    return 0


def cmd_tune(args) -> int:
    from stx_platform.config_io import split_overrides
    from stx_platform.tuning.config import SweepConfig
    from stx_platform.tuning.sweep import resume_sweep, run_sweep

    with _ray_session(args, dashboard=True):
        if args.resume:
            res = resume_sweep(args.storage, args.name, mlflow_uri=args.mlflow, print_fn=lambda m: print(m, flush=True),
                               trust_storage=args.trust_storage)
        else:
            sweep = SweepConfig.load(args.config, split_overrides(args.set, "tune", default="tune"))
            labels = _label_config(args, split_overrides(args.set, "labels"))
            train = _train_config(args, split_overrides(args.set, "train"))
            res = run_sweep(args.dataset, _validation_fold(args.validation), sweep, train, labels,
                            storage_url=args.storage, name=args.name, mlflow_uri=args.mlflow,
                            print_fn=lambda m: print(m, flush=True), register_model=args.register_model or None)
    print()
    print(res.summary["table"])
    if res.interrupted:
        print(f"\nsweep {res.name} interrupted after {res.seconds:.0f} s; continue it with: "
              f"stx tune --resume --name {res.name} --storage {args.storage}")
        return 130
    print(f"\n{len(res.trials)} trial(s) in {res.seconds:.0f} s; summary: {res.summary['markdown']}, "
          f"{res.summary['plot']}")
    if res.best is None:
        print("no trial reported a validation score", file=sys.stderr)
        return 3
    b = res.best
    print(f"best: trial {b['trial']} val {res.metric} {_fmt(b[res.metric], 4)} -> {res.best_config}")
    print(f"mlflow: parent run {res.mlflow_run_id} at {res.tracking_uri}")
    if res.model:
        _print_model(res.model.get("uri"), res.model.get("registered"), res.model.get("note", ""))
    print(f"next:   stx train --config {res.best_config} --dataset <the swept dataset>")
    return 0 if not res.errors else 3


def _print_model(uri: str | None, registered: str | None, note: str) -> None:
    """Where the MLflow model of a run went: its URI, its registered version or why it has none."""
    reg = f"; registered as models:/{registered}" if registered else ""
    print(f"mlflow: model {uri or '(none)'}{reg}" + (f"\nmlflow: {note}" if note else ""))


def cmd_mlflow_relocate(args) -> int:
    from stx_platform.tracking import artifact_root, redact, relocate, tracking_uri

    uri = tracking_uri(args.mlflow)
    changed = relocate(uri)
    print(f"{redact(uri)}: artifact URIs now under {artifact_root(uri)}: "
          + ", ".join(f"{k} {v}" for k, v in changed.items()))
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from stx_platform import storage
    from stx_platform.progress import Progress
    from stx_platform.training.checkpoint import load_trained_model
    from stx_platform.training.validate import evaluate

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    tm = load_trained_model(args.checkpoint, device)
    fold, source = args.pannuke, args.pannuke
    if args.tiles:
        from stx_platform.sources.tiles import TileFolder

        names = [n.strip() for n in args.type_names.split(",")] if args.type_names else None
        fold, source = TileFolder(args.tiles, args.mpp, names), args.tiles
    print(f"stx evaluate: {tm.source} (epoch {tm.epoch + 1}, {tm.model.config.name}) on {source}", flush=True)
    ev = evaluate(tm.model, fold, args.limit, args.batch_size, overlays=args.overlays,
                  progress=Progress("  ").fraction("images"), pairing=args.pairing)
    if args.tiles:
        from stx_platform.training.validate import round_trip

        rt = round_trip(fold, args.limit)
        ev.metrics.update({f"round_trip_{k}": float(v) for k, v in rt.items()})
    rows = [{"metric": k, "value": _fmt(v, 4)} for k, v in ev.metrics.items()]
    print()
    print(_table(rows, ["metric", "value"]))
    print()
    print("confusion (matched nuclei; rows truth, columns prediction):")
    print(ev.confusion.to_string())
    if args.tiles:
        print("round_trip_*: the post-processing on perfect targets (the truth's own binary and HV maps)")
    written = ev.write(args.out, title=f"{tm.model.config.name} epoch {tm.epoch + 1}")
    storage.write_json(storage.join(args.out, "checkpoint.json"), {"checkpoint": tm.source, "epoch": tm.epoch + 1,
                                                                   "fold": source, "images": ev.scores["images"],
                                                                   "pairing": args.pairing})
    print(f"\nwrote {', '.join(written.values())} ({time.time() - t0:.1f} s)")
    return 0


def cmd_experiment(args) -> int:
    import torch

    from stx_platform import storage
    from stx_platform.config_io import split_overrides
    from stx_platform.experiments import run as X
    from stx_platform.tracking import redact
    from stx_platform.viz import figure_png

    t0 = time.time()
    say = lambda m: print(m, flush=True)  # noqa: E731
    source = _source(args.source)
    label_config = _label_config(args, split_overrides(args.set, "labels", default="train"))
    out = args.out
    print(f"stx experiment {args.table}: source {source} -> {out}", flush=True)
    with _ray_session(args):
        cfg = _train_config(args, split_overrides(args.set, "train", default="train"), cpu_preset="cpu")
        validation = _validation_fold(args.validation)
        uri, parent = X.start_parent(args.mlflow, args.table, {"source": source, "out": out, "preset": cfg.preset,
                                                               "model": cfg.model, "validation": validation})
        try:
            setup = X.prepare(source, out, validation, cfg, dataset=args.dataset, heldout=args.heldout,
                              pannuke_fold=args.pannuke_train, label_config=label_config, say=say)
            X.train_models(setup, cfg, mlflow_uri=uri, parent_run_id=parent, say=say, on_epoch=_print_epoch)
        except BaseException:
            X.fail_parent(uri, parent)
            raise
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    truth, samples = X.heldout_truth(setup)
    scores = X.score_models(setup, truth, device=device, overlays=args.overlays, say=say)
    files = {}
    if args.table == "table2":
        md, doc = X.table2(scores)
        for name, s in scores.items():
            slug = name.split()[0].lower()
            written = s["evaluation"].write(storage.join(out, "table2", slug), title=f"{name} on held-out organs")
            files |= {f"{slug}_{k}": v for k, v in written.items() if k != "metrics"}
        figures = doc
    else:
        from stx_platform.labels.evaluate import confusion_figure
        from stx_platform.labels.markers import load_markers

        methods = list(args.methods or X.LABEL_METHODS)
        md, doc, results = X.table3(setup, scores, truth, samples, label_config, load_markers(label_config.markers),
                                    methods, args.cache, say=say)
        files["confusion"] = storage.join(out, "table3_confusion.png")
        storage.write_bytes(files["confusion"], figure_png(confusion_figure(results, list(doc))))
        figures = {k: doc[k] for k in X.MODELS}
    header = (f"{'Table 2: segmentation' if args.table == 'table2' else 'Table 3: nucleus classification'} on the "
              f"held-out organs ({', '.join(setup.split.heldout_organs)}; {len(setup.split.heldout)} slide(s)); "
              f"models trained with preset {cfg.preset} ({cfg.model}), "
              + "; ".join(f"{n}: {m['epochs']} x {m['samples_per_epoch']} samples" for n, m in setup.models.items())
              + "\n\n")
    files[f"{args.table}_md"] = storage.join(out, f"{args.table}.md")
    files[f"{args.table}_json"] = storage.join(out, f"{args.table}.json")
    storage.write_bytes(files[f"{args.table}_md"], (header + md + "\n").encode())
    storage.write_json(files[f"{args.table}_json"], doc)
    prefix = "heldout" if args.table == "table2" else "table3"
    X.log_model_runs(uri, parent, setup, figures, prefix)
    X.finish_parent(uri, parent, files, {f"{n.split()[0].lower()}_{k}": v for n, f in figures.items()
                                         for k, v in f.items() if isinstance(v, (int, float))})
    print()
    print(header + md)
    print(f"\nwrote {', '.join(files.values())} ({time.time() - t0:.0f} s)")
    print(f"mlflow: parent run {parent} at {redact(uri)}")
    return 0


def _label_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="label config YAML (defaults: the paper's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. resolution=2")
    _marker_options(p)
    p.add_argument("--cache", help="stage-cache URL (default: <out>/_cache for label)")


def _organ_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--organ", help="the samples' organ (default: from their metadata; unknown: organ-agnostic "
                                   "markers only)")


def _marker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--panglaodb", help="PanglaoDB markers TSV you downloaded")
    p.add_argument("--cellmarker", help="CellMarker 2.0 table you downloaded (csv, csv.gz or xlsx)")
    p.add_argument("--cancersea", help="folder of CancerSEA gene-set files")


def _training_options(p: argparse.ArgumentParser, preset_help: str) -> None:
    """What training reads: the dataset, the validation fold, the preset."""
    p.add_argument("--dataset", default="stx-data/dataset", help="built dataset URL (stx build --out)")
    p.add_argument("--validation", help=f"PanNuke-format fold URL (default: {DEFAULT_PANNUKE_OUT}, synthetic, "
                                        "generated when missing)")
    p.add_argument("--preset", choices=("auto", "tiny", "cpu", "cellvit"), default="auto", help=preset_help)


def _run_options(p: argparse.ArgumentParser, name_help: str, resume_help: str) -> None:
    """Where a run is tracked and which Ray runs it."""
    p.add_argument("--name", help=name_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    _run_options_basic(p)


def _run_options_basic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///stx-data/mlflow.db)")
    p.set_defaults(mlflow_fallback=True)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")


def _register_option(p: argparse.ArgumentParser, what: str) -> None:
    from stx_platform.tracking import REGISTERED_MODEL

    p.add_argument("--register-model", default=REGISTERED_MODEL, metavar="NAME",
                   help=f"MLflow Model Registry name to register {what} under (default: {REGISTERED_MODEL}; "
                        "'' registers nothing; the model is logged in its run either way)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stx", description="stx-platform: spatial transcriptomics -> nuclei "
                                "segmentation and classification training data")
    p.add_argument("--version", action="version", version=f"stx-platform {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    from stx_platform.synth.generate import DEFAULT_CELLS, DEFAULT_SEED, DEFAULT_SLIDES
    from stx_platform.synth.organs import RECIPES

    s = sub.add_parser("synth", help="write synthetic Xenium slides with ground truth (HEST-1k layout or raw "
                                     "Xenium bundles)")
    s.add_argument("--out", default=DEFAULT_HEST_OUT, help=f"output URL (folder or s3://); default {DEFAULT_HEST_OUT}")
    s.add_argument("--slides", type=int, default=DEFAULT_SLIDES)
    s.add_argument("--seed", type=int, default=DEFAULT_SEED)
    s.add_argument("--organs", nargs="+", metavar="ORGAN", help=f"cycled over slides; any of: {', '.join(RECIPES)}")
    s.add_argument("--cells", type=int, default=DEFAULT_CELLS, help="cells per slide (>= 200; 200000 for benchmarks)")
    s.add_argument("--layout", choices=("hest", "xenium"), default="hest")
    s.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    s.add_argument("--address", help="Ray cluster to generate on, one task per slide (default: RAY_ADDRESS, "
                                     "else local processes)")
    s.add_argument("--pannuke-out", help="also write a synthetic PanNuke-format validation fold (64 images) here")
    s.set_defaults(func=cmd_synth)

    sp = sub.add_parser("synth-pannuke", help="write a synthetic PanNuke-format validation fold")
    sp.add_argument("--out", default=DEFAULT_PANNUKE_OUT)
    sp.add_argument("--n", type=int, default=64, help="number of 256x256 images")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_synth_pannuke)

    i = sub.add_parser("inspect", help="read one sample (ROOT#ID for HEST, or a Xenium bundle folder) and summarise it")
    i.add_argument("sample")
    i.add_argument("--assignment", choices=("cell_id", "nucleus", "polygon"), default="cell_id",
                   help="how transcripts go to nuclei: by cell_id (default; bundles: the whole-cell matrix), "
                        "nucleus (only those over the nucleus), polygon (HEST: point in nucleus polygon)")
    _bundle_flags(i)
    i.set_defaults(func=cmd_inspect)

    lb = sub.add_parser("label", help="label the cells of slides (the paper's clustering + marker voting)")
    lb.add_argument("--sample", required=True, help="ROOT#ID, a HEST root (all samples), a Xenium output folder "
                                                    "(H&E not needed), a 10x cell_feature_matrix.h5 or an .h5ad of "
                                                    "raw counts")
    lb.add_argument("--out", default="stx-data/labels", help="label tables go to OUT/<label set id>/")
    _label_options(lb)
    _organ_option(lb)
    lb.set_defaults(func=cmd_label)

    le = sub.add_parser("label-eval", help="compare the method, w/o Hier and the baselines against ground truth")
    le.add_argument("--samples", default=DEFAULT_HEST_OUT, help="ROOT#ID, a root of annotated samples, or an "
                                                                ".h5ad with obs['class']")
    le.add_argument("--out", default="stx-data/label-eval")
    le.add_argument("--methods", nargs="+", help="subset of: TopDown UCell AUCell CellAssign 'w/o Hier' Ours")
    _label_options(le)
    _organ_option(le)
    le.set_defaults(func=cmd_label_eval)

    mk = sub.add_parser("markers", help="load marker databases and report how their cell types map to classes")
    mk.add_argument("--out", help="also write the report (Markdown) here")
    mk.add_argument("--max-dropped", type=int, default=50, help="dropped names to list per source")
    mk.add_argument("--mapping", help="write every cell-type name with its class here (CSV)")
    _label_options(mk)
    mk.set_defaults(func=cmd_markers)

    bd = sub.add_parser("build", help="label and patch slides on Ray into a training dataset (resumable)",
                        description="--set takes label fields (resolution=2 or labels.resolution=2), patch fields "
                                    "(patches.stride=200) and quality gates (quality.min_patches=0, "
                                    "quality.max_empty_share=0.5, quality.min_nucleus_area_um2=5); a slide that "
                                    "fails a gate is recorded as failed with the gate's name")
    bd.add_argument("--source", help=f"HEST root, Xenium bundles folder or ROOT#ID (default: {DEFAULT_HEST_OUT}, "
                                     "generated when empty)")
    bd.add_argument("--out", default="stx-data/dataset", help="dataset URL (folder or s3://)")
    bd.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    bd.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    bd.add_argument("--cpus-per-slide", type=float, default=1.0, help="CPUs each slide task holds (default 1)")
    bd.add_argument("--max-parallel", type=int, default=None,
                    help="slides built at once (default: as many as the cluster's CPUs hold, counting what its "
                         "autoscaler may add)")
    bd.add_argument("--mlflow", help="MLflow tracking URI to log the build to (default: MLFLOW_TRACKING_URI)")
    _bundle_flags(bd)
    bd.add_argument("--assignment", choices=("cell_id", "nucleus"), default="cell_id",
                    help="Xenium bundle: count the whole cell (default) or only transcripts over the nucleus")
    bd.add_argument("--no-review", action="store_true", help="skip the per-slide review files (QuPath GeoJSON, "
                                                             ".h5ad with labels, labelled thumbnail)")
    bd.add_argument("--max-attempts", type=int, default=2, help="starts per slide before a slide whose worker "
                                                                "dies (native crash, out of memory) is failed")
    _label_options(bd)
    bd.set_defaults(func=cmd_build)

    rv = sub.add_parser("review", help="where a built slide's review files are (QuPath GeoJSON, .h5ad with the "
                                       "labels, labelled thumbnail); opens nothing")
    rv.add_argument("sample", help="sample id")
    rv.add_argument("--dataset", default="stx-data/dataset", help="built dataset URL (stx build --out)")
    rv.set_defaults(func=cmd_review)

    tr = sub.add_parser("train", help="train CellViT on a built dataset with Ray Train, validating on a PanNuke "
                                      "fold every epoch; tracked in MLflow")
    _training_options(tr, "starting settings: cellvit = the paper's GPU recipe, cpu = a small model that learns "
                          "on 2 cores in ~11 min per 565 patches, tiny = a 2-minute CPU demo; auto picks cellvit "
                          "or tiny by GPU")
    tr.add_argument("--config", help="YAML with a train: section (or train fields at top level); a labels: "
                                     "section (best_labels.yaml of a sweep) picks that label set")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a train field, e.g. epochs=5")
    tr.add_argument("--label-set", help="label set id to train on (default: the labels the dataset was built with)")
    tr.add_argument("--storage", default="stx-data/runs", help="where runs and checkpoints go (folder or s3://)")
    _run_options(tr, "run name (default: model-labelset-time); with --resume, the run to continue",
                 "continue the stopped run --name from its last checkpoint")
    _register_option(tr, "the best checkpoint")
    tr.set_defaults(func=cmd_train)

    tu = sub.add_parser("tune", help="Ray Tune sweep over label hyperparameters: each trial relabels the dataset "
                                     "and trains CellViT, scored on the PanNuke fold; tracked in MLflow")
    _training_options(tu, "training settings of every trial (auto: cellvit with GPUs, else tiny)")
    tu.add_argument("--config", help="YAML with tune: (search space, metric, trials), labels: (base label config) "
                                     "and train: sections")
    tu.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field: num_samples=4, metric=macro_f1, space.tau_cancer=[0.1,0.3], "
                         "train.epochs=3, labels.resolution=3")
    _marker_options(tu)
    tu.add_argument("--storage", default="stx-data/sweeps", help="where sweeps go (folder or s3://)")
    _run_options(tu, "sweep name (default: sweep-time); with --resume, the sweep to continue",
                 "continue the interrupted sweep --name")
    _register_option(tu, "the best trial's model (a resumed sweep keeps its first choice)")
    tu.add_argument("--trust-storage", action="store_true",
                    help="with --resume: unpickle the sweep's saved state even if this machine did not write it "
                         "(only when no one else can write to the storage)")
    tu.set_defaults(func=cmd_tune)

    ev = sub.add_parser("evaluate", help="score a trained checkpoint on a PanNuke-format fold or a folder of "
                                         "annotated tiles (PanNuke metrics, confusion matrix, overlays)")
    ev.add_argument("--checkpoint", required=True, help="model.pt, a checkpoint folder or a run folder (newest epoch)")
    ev_in = ev.add_mutually_exclusive_group()
    ev_in.add_argument("--pannuke", default=DEFAULT_PANNUKE_OUT, help="PanNuke-format fold URL")
    ev_in.add_argument("--tiles", help="folder of annotated tiles: NAME.png (or .jpg) with NAME_inst.npy and "
                                       "optionally NAME_type.npy, in it or its subfolders (e.g. NuCLS)")
    ev.add_argument("--mpp", type=float, default=0.25, help="with --tiles: their um per pixel (default 0.25, 40x); "
                                                            "they are resampled to the model's 0.25")
    ev.add_argument("--type-names", help="with --tiles: class of each type code 1, 2, ... in NAME_type.npy, comma-"
                                         "separated (default PanNuke's: Neoplastic,Inflammatory,Connective,Dead,"
                                         "Epithelial); other names leave a nucleus unlabelled, e.g. NuCLS: "
                                         "Non-Tumor,Neoplastic")
    ev.add_argument("--out", default="stx-data/evaluate", help="where metrics.json and the pictures go")
    ev.add_argument("--limit", type=int, help="first N images only")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--overlays", type=int, default=6, help="images drawn into overlays.png")
    ev.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ev.add_argument("--pairing", choices=("hovernet", "gated"), default="hovernet",
                    help="detection pairing: 'hovernet' (as HoVer-Net and CellViT report: Hungarian over all "
                         "distances, pairs beyond 12 px dropped) or 'gated' (Hungarian within 12 px only)")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("experiment", help="the paper's experiments: Table 2 (segmentation of held-out organs, ST "
                                           "model vs PanNuke model) and Table 3 (nucleus classification)")
    ex_sub = ex.add_subparsers(dest="table", required=True)
    for table, text in (("table2", "train the ST model on the training organs and the PanNuke model on a PanNuke "
                                   "fold (same preset and budget); score both on the held-out organs' patches"),
                        ("table3", "the label methods and both models (majority type per nucleus) against the "
                                   "held-out slides' annotation")):
        t = ex_sub.add_parser(table, help=text, description=text + "; models trained by the other table with the "
                                                                   "same settings and --out are reused")
        t.add_argument("--source", help=f"HEST root, Xenium bundles folder (default: {DEFAULT_HEST_OUT}, generated "
                                        "when empty)")
        t.add_argument("--out", default="stx-data/experiment", help="where the build, runs and tables go")
        t.add_argument("--dataset", help="dataset URL to build the source into (default: OUT/dataset)")
        t.add_argument("--heldout", nargs="+", metavar="ORGAN",
                       help="organs to hold out (default: the paper's held-out organs present, else the last organ "
                            "in name order)")
        t.add_argument("--pannuke-train", help="PanNuke-format fold the PanNuke model trains on (default: a "
                                               "synthetic one, written to OUT/pannuke-train)")
        t.add_argument("--validation", help=f"PanNuke-format fold both models validate on every epoch (default: "
                                            f"{DEFAULT_PANNUKE_OUT}, synthetic, generated when missing)")
        t.add_argument("--preset", choices=("auto", "tiny", "cpu", "cellvit"), default="auto",
                       help="both models' training settings (auto: cellvit with GPUs, else cpu)")
        t.add_argument("--config", help="YAML with train: and labels: sections")
        t.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a field: train.epochs=2 (or epochs=2), labels.resolution=3")
        _marker_options(t)
        t.add_argument("--cache", help="stage-cache URL for the label methods (table3)")
        if table == "table3":
            t.add_argument("--methods", nargs="+", help="label methods, any of stx label-eval's (default: the paper's "
                                                        "rows: TopDown UCell AUCell CellAssign 'Paper w/o Hier' "
                                                        "Paper Ours)")
        t.add_argument("--device", help="cuda or cpu for scoring (default: cuda when available)")
        t.add_argument("--overlays", type=int, default=6, help="held-out patches drawn per model")
        _run_options_basic(t)
        t.set_defaults(func=cmd_experiment)

    from stx_platform.predict import add_predict_parser

    add_predict_parser(sub)

    mr = sub.add_parser("mlflow-relocate", help="after moving stx-data/: point the local MLflow store's artifact "
                                                "URIs (absolute in mlflow.db) at the mlartifacts folder beside it")
    mr.add_argument("--mlflow", help="the sqlite MLflow store (default: MLFLOW_TRACKING_URI, else "
                                     "sqlite:///stx-data/mlflow.db)")
    mr.set_defaults(func=cmd_mlflow_relocate)

    ls = sub.add_parser("list", help="list the samples under a URL")
    ls.add_argument("url")
    ls.set_defaults(func=cmd_list)
    return p


def job_working_dir() -> str | None:
    """The working directory when this process is the driver of a ``ray job submit --working-dir``
    job: Ray unpacks the job's files there, on one node, and deletes them after the job."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return None
    return os.getcwd() if isinstance(job, dict) and (job.get("runtime_env") or {}).get("working_dir") else None


def check_job_locations(args) -> None:
    """In a Ray job with a working dir, refuse relative local data locations (given or by
    default): they would resolve inside the job's temporary copy of its files, where the output
    is lost after the job and other nodes never see it."""
    from stx_platform.tracking import DEFAULT_TRACKING_URI

    where = job_working_dir()
    if where is None:
        return
    bad = []
    for dest, unset in LOCATION_OPTIONS.items():
        value = (getattr(args, dest) or unset) if hasattr(args, dest) else None
        if value and "://" not in value and not os.path.isabs(value):
            bad.append(f"--{dest.replace('_', '-')} {value}")
    uri = getattr(args, "mlflow", None) or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and getattr(args, "mlflow_fallback", False):
        uri = DEFAULT_TRACKING_URI
    if uri and uri.startswith("sqlite:///") and not uri[len("sqlite:///"):].startswith("/"):
        bad.append(f"--mlflow {uri}")
    if bad:
        raise ValueError(f"this runs as a Ray job with a working dir, where relative paths resolve inside the job's "
                         f"temporary copy of its files ({where}): lost after the job and unseen by other nodes. "
                         f"Give these as s3:// URLs or absolute paths on storage every node shares: "
                         f"{', '.join(bad)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_job_locations(args)
        return args.func(args)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
