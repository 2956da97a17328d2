"""Table 2 and Table 3 end to end: build the source, split organs, train the ST model on the
training organs and the PanNuke model on a PanNuke-format fold with the same architecture, preset
and budget, then score both on the held-out organs. Tracked in MLflow as one parent run per table
with a nested run per model. The caller owns the Ray session.

Layout under ``out`` (a folder or s3://):

    dataset/            the build of the source (resumable; ``--dataset`` puts it elsewhere)
    pannuke-train/      the synthetic PanNuke training fold (when no fold is given)
    pannuke-dataset/    the training fold as a dataset (pannuke_dataset.py)
    runs/               both training runs
    experiment.json     split, budget and both models' checkpoints (reused by the next table)
    table2.{md,json}, table2/<model>/ (metrics.json, confusion.png, overlays.png)
    table3.{md,json}, table3_confusion.png
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pandas as pd

from stx_platform import storage
from stx_platform.experiments.heldout import DatasetPatches, NucleusVotes, pooled, type_votes
from stx_platform.experiments.pannuke_dataset import write_pannuke_dataset
from stx_platform.experiments.split import OrganSplit, organ_split
from stx_platform.tracking import client, experiment_id, log_metrics, log_params, tracking_uri
from stx_platform.training.config import TrainConfig
from stx_platform.training.validate import json_safe

EXPERIMENT = "stx-experiment"
ST, PANNUKE = "ST model", "PanNuke model"
MODELS = (ST, PANNUKE)
#: Table 2's columns, in the paper's order
TABLE2_KEYS = ("dice", "jaccard", "bPQ", "f1", "precision", "recall")
#: further figures each model's Table 2 entry carries
TABLE2_EXTRA = ("mPQ", "macro_f1", "accuracy")
STATE = "experiment.json"
#: Table 3's label rows by default: the paper's (baselines, its rules with and without the hierarchy) and ours
LABEL_METHODS = ("TopDown", "UCell", "AUCell", "CellAssign", "Paper w/o Hier", "Paper", "Ours")


@dataclass
class Setup:
    """What both tables share: the build, the split, the training fold and both trained models."""

    out: str
    dataset: str
    split: OrganSplit
    refs: dict[str, str]                 # held-out sample id -> its source reference
    validation: str
    pannuke_fold: str
    models: dict[str, dict] = field(default_factory=dict)   # name -> checkpoint, run, budget


def budgets(cfg: TrainConfig, n_st: int, n_pannuke: int) -> dict[str, TrainConfig]:
    """Both models' settings: the same preset and the same number of training samples. The ST
    model sees ``samples_per_epoch`` (all its ``n_st`` patches when None or more) per epoch; the PanNuke model
    as many per epoch when its fold is large enough, else its whole fold for proportionally more
    epochs."""
    per_epoch = min(cfg.samples_per_epoch or n_st, n_st)
    total = cfg.epochs * per_epoch
    st = cfg.model_copy(update={"samples_per_epoch": per_epoch})
    if n_pannuke >= per_epoch:
        pn = cfg.model_copy(update={"samples_per_epoch": per_epoch})
    else:
        pn = cfg.model_copy(update={"samples_per_epoch": n_pannuke, "epochs": max(1, math.ceil(total / n_pannuke))})
    return {ST: st, PANNUKE: pn}


def _default_fold(url: str, n: int, seed: int, say) -> str:
    from stx_platform.synth.pannuke import write_pannuke_fold

    if storage.exists(storage.join(url, "images.npy")):
        from stx_platform.sources.pannuke import PanNukeFold

        if len(PanNukeFold(url)) >= n:
            return url
    say(f"writing a synthetic PanNuke training fold of {n} images to {url} (seed {seed}, not the validation "
        "fold's)")
    write_pannuke_fold(url, n, seed, progress=lambda m: say(f"  {m}"))
    return url


def prepare(source: str, out: str, validation: str, cfg: TrainConfig, *, dataset: str | None = None,
            heldout: list[str] | None = None, pannuke_fold: str | None = None, label_config=None,
            say: Callable[[str], None] = print) -> Setup:
    """Build ``source`` (resumable), split its organs and write the PanNuke training dataset."""
    from stx_platform.build.manifest import done_slides
    from stx_platform.build.run import run_build
    from stx_platform.labels.config import LabelConfig
    from stx_platform.patches.config import PatchConfig

    dataset = dataset or storage.join(out, "dataset")
    manifest = run_build(source, dataset, PatchConfig(), label_config or LabelConfig(), print_fn=say)
    if manifest["failed"]:
        say(f"warning: {manifest['failed']} slide(s) failed to build and take no part (see {dataset}/manifest.json)")
    slides = done_slides(dataset)
    split = organ_split(slides, heldout)
    say(f"held out: {', '.join(split.heldout_organs)} ({len(split.heldout)} slide(s); {split.why}); training "
        f"organs: {', '.join(split.train_organs)} ({len(split.train)} slide(s))")
    n_st = patch_count(dataset, split.train)
    per_epoch = budgets(cfg, n_st, n_st)[ST].samples_per_epoch
    fold = pannuke_fold or _default_fold(storage.join(out, "pannuke-train"), max(64, per_epoch), seed=1, say=say)
    write_pannuke_dataset(fold, storage.join(out, "pannuke-dataset"), progress=lambda m: say(f"  PanNuke {m}"))
    refs = {s["sample_id"]: s["ref"] for s in slides if s["sample_id"] in set(split.heldout)}
    return Setup(out, dataset, split, refs, validation, fold)


def _state_key(setup: Setup, name: str, cfg: TrainConfig) -> dict:
    return {"dataset": setup.dataset, "train": cfg.model_dump(mode="json"),
            "sample_ids": setup.split.train if name == ST else None,
            "fold": setup.pannuke_fold if name == PANNUKE else None}


def train_models(setup: Setup, cfg: TrainConfig, *, mlflow_uri: str, parent_run_id: str,
                 say: Callable[[str], None] = print, on_epoch: Callable[[int], Callable] | None = None
                 ) -> dict[str, dict]:
    """Train (or reuse from ``experiment.json``, when trained with the same settings) both models;
    ``on_epoch(epochs)`` gives a run's per-epoch callback."""
    from stx_platform.experiments.pannuke_dataset import LABEL_SET
    from stx_platform.training.run import run_training

    state_url = storage.join(setup.out, STATE)
    state = storage.read_json(state_url) if storage.exists(state_url) else {}
    n_st = patch_count(setup.dataset, setup.split.train)
    pn_dataset = storage.join(setup.out, "pannuke-dataset")
    n_pn = patch_count(pn_dataset)
    configs = budgets(cfg, n_st, n_pn)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name, c in configs.items():
        key = _state_key(setup, name, c)
        prev = state.get("models", {}).get(name)
        if prev and prev.get("key") == key and prev.get("checkpoint") and storage.exists(prev["checkpoint"]):
            say(f"{name}: trained before with these settings, reusing {prev['checkpoint']}")
            setup.models[name] = {**prev, "reused": True}
            continue
        say(f"{name}: training {c.model} ({c.preset}) for {c.epochs} epoch(s) of {c.samples_per_epoch} samples on "
            + (f"{n_st} patches of {', '.join(setup.split.train_organs)}" if name == ST else
               f"{n_pn} images of the PanNuke fold {setup.pannuke_fold}"))
        res = run_training(setup.dataset if name == ST else pn_dataset, setup.validation, c,
                           storage_url=storage.join(setup.out, "runs"), name=f"{name.split()[0].lower()}-{stamp}",
                           label_set_id=None if name == ST else LABEL_SET, mlflow_uri=mlflow_uri,
                           experiment=EXPERIMENT, on_epoch=on_epoch(c.epochs) if on_epoch else None,
                           mlflow_tags={"mlflow.parentRunId": parent_run_id, "stx.model": name},
                           sample_ids=setup.split.train if name == ST else None)
        setup.models[name] = {"key": key, "checkpoint": res.best_checkpoint, "run_dir": res.run_dir,
                              "mlflow_run_id": res.mlflow_run_id, "seconds": round(res.seconds, 1),
                              "epochs": c.epochs, "samples_per_epoch": c.samples_per_epoch, "reused": False}
        state.setdefault("models", {})[name] = {k: v for k, v in setup.models[name].items() if k != "reused"}
        storage.write_json(state_url, {**state, "split": asdict(setup.split)})
    return setup.models


def patch_count(dataset: str, sample_ids=None) -> int:
    """Patches of the dataset's done slides (of ``sample_ids`` when given)."""
    from stx_platform.build.manifest import done_slides

    keep = None if sample_ids is None else set(sample_ids)
    return sum(int(s["patches"]) for s in done_slides(dataset) if keep is None or s["sample_id"] in keep)


def heldout_truth(setup: Setup) -> tuple[dict[str, pd.Series], list]:
    """The held-out slides' annotation (class by cell id) and the samples read for it."""
    from stx_platform.sources.cells_only import read_cells

    samples = [read_cells(ref) for ref in setup.refs.values()]
    truth = {}
    for s in samples:
        if s.ground_truth is not None:
            t = s.ground_truth["class"].astype(str)
            t.index = t.index.astype(str)
            truth[s.sample_id] = t
    return truth, samples


def score_models(setup: Setup, truth: dict[str, pd.Series], *, device: str = "cpu", overlays: int = 6,
                 say: Callable[[str], None] = print) -> dict[str, dict]:
    """Each model on every held-out patch: the PanNuke metrics (:func:`evaluate`) and the majority
    type of every nucleus (:class:`NucleusVotes`). ``{name: {"evaluation", "nuclei"}}``."""
    from stx_platform.progress import Progress
    from stx_platform.training.checkpoint import load_trained_model
    from stx_platform.training.validate import evaluate

    patches = DatasetPatches(setup.dataset, setup.split.heldout, truth)
    out = {}
    for name in setup.models:
        tm = load_trained_model(setup.models[name]["checkpoint"], device)
        votes = NucleusVotes()

        def on_item(i, item, type_prob, votes=votes):
            votes.add(patches.sample_id(i), patches.cell_ids(i), type_votes(type_prob, item.instances))

        say(f"{name}: scoring {len(patches)} held-out patches")
        ev = evaluate(tm.model, patches, overlays=overlays, on_item=on_item,
                      progress=Progress(f"  {name}").fraction("patches"))
        out[name] = {"evaluation": ev, "nuclei": votes.classes()}
    return out


def table2(scores: dict[str, dict]) -> tuple[str, dict]:
    """Markdown (the paper's Table 2 columns) and ``{model: {dice, jaccard, bPQ, f1, precision,
    recall, mPQ, macro_f1, accuracy, images}}``."""
    doc = {}
    for name, s in scores.items():
        m = s["evaluation"].metrics
        doc[name] = json_safe({k: m[k] for k in TABLE2_KEYS + TABLE2_EXTRA}
                              | {"images": s["evaluation"].scores["images"]})
    head = ["Model", "Dice", "Jaccard", "bPQ", "F1", "Precision", "Recall", "mPQ", "macro F1 (matched)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in doc.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r[k]) for k in TABLE2_KEYS + ("mPQ", "macro_f1")) + " |")
    return "\n".join(lines), doc


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def table3(setup: Setup, scores: dict[str, dict], truth: dict[str, pd.Series], samples: list, label_config, db,
           methods, cache: str | None = None, say: Callable[[str], None] = print) -> tuple[str, dict, dict]:
    """The label methods and both models on the held-out slides' annotated nuclei that lie in a
    patch (the nuclei the models classify), scored alike. Returns (Markdown, ``{method: {macro_f1,
    accuracy, n_cells}}``, the full scores)."""
    from stx_platform.labels.compare import predict_all
    from stx_platform.labels.evaluate import score
    from stx_platform.progress import Progress

    if not truth:
        raise ValueError(f"held-out slides {', '.join(setup.refs)}: no annotation (ground_truth) to score "
                         "against; Table 3 needs annotated slides")
    seen = set().union(*(set(s["nuclei"].index) for s in scores.values()))
    truth_all = pooled(truth)
    truth_all = truth_all[truth_all.index.isin(seen)]
    preds = {s.sample_id: predict_all(s, label_config, db, methods, cache, Progress(s.sample_id))
             for s in samples if s.sample_id in truth}
    results = {m: score(truth_all, pooled({sid: p[m] for sid, p in preds.items()})) for m in methods}
    for name, s in scores.items():
        results[name] = score(truth_all, s["nuclei"])
    from stx_platform.labels.evaluate import table3 as table3_md

    order = [*methods, *scores]
    doc = {m: json_safe({"macro_f1": results[m]["macro_f1"], "accuracy": results[m]["accuracy"],
                         "n_cells": results[m]["n_cells"]}) for m in order}
    return table3_md(results, order), doc, results


def start_parent(uri: str | None, table: str, params: dict) -> tuple[str, str]:
    """(tracking URI, run id) of a new parent run in the ``stx-experiment`` experiment."""
    uri = tracking_uri(uri)
    run = client(uri).create_run(experiment_id(uri, EXPERIMENT), run_name=f"{table}-{time.strftime('%Y%m%d-%H%M%S')}",
                                 tags={"stx.kind": "experiment", "stx.table": table})
    log_params(uri, run.info.run_id, params)
    return uri, run.info.run_id


def log_model_runs(uri: str, parent_run_id: str, setup: Setup, figures: dict[str, dict], prefix: str) -> dict[str, str]:
    """Each model's figures into its nested run: its training run when trained by this command,
    else a new nested run pointing at the training run. Returns {model: run id}."""
    c = client(uri)
    ids = {}
    for name, m in setup.models.items():
        run_id = m["mlflow_run_id"]
        if m.get("reused"):
            run = c.create_run(experiment_id(uri, EXPERIMENT), run_name=f"{name} ({prefix})",
                               tags={"mlflow.parentRunId": parent_run_id, "stx.model": name,
                                     "stx.train_run": run_id})
            run_id = run.info.run_id
        log_metrics(uri, run_id, {f"{prefix}_{k}": v for k, v in figures.get(name, {}).items()}, 0)
        if m.get("reused"):
            c.set_terminated(run_id, "FINISHED")
        ids[name] = run_id
    return ids


def fail_parent(uri: str, run_id: str) -> None:
    client(uri).set_terminated(run_id, "FAILED")


def finish_parent(uri: str, run_id: str, files: dict[str, str], metrics: dict) -> None:
    c = client(uri)
    log_metrics(uri, run_id, metrics, 0)
    for url in files.values():
        if storage.exists(url):
            with storage.local_copy(url) as local:
                c.log_artifact(run_id, local)
    c.set_terminated(run_id, "FINISHED")

