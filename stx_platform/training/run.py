"""Driver side of a training run: checks the inputs, starts (or resumes) the MLflow run, builds the
streamed dataset and the TorchTrainer, and reports each epoch as it finishes.

Layout of a run under the storage URL (local folder or s3://):

    <storage>/<name>/stx_run.json                 what was trained on, with which config, MLflow run id
    <storage>/<name>/checkpoint_epoch_NNNN/       Ray Train checkpoints (see checkpoint.py)

``resume=True`` re-enters the same ``<storage>/<name>``: Ray Train V2 restores its checkpoint
manager from there and the workers continue from the latest checkpoint; the MLflow run continues.
The caller owns ``ray.init``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ray.train import UserCallback

from stx_platform import storage
from stx_platform.capacity import capacity
from stx_platform.build.manifest import done_slides
from stx_platform.tracking import (
    client,
    experiment_id,
    log_metrics,
    log_params,
    redact,
    tracking_uri,
)
from stx_platform.training.config import TrainConfig
from stx_platform.training.loop import train_loop

RUN_INFO = "stx_run.json"
EXPERIMENT = "stx-train"


@dataclass
class TrainResult:
    run_dir: str
    name: str
    epochs: int
    metrics: dict
    best_checkpoint: str | None
    best_metrics: dict
    mlflow_run_id: str
    tracking_uri: str
    seconds: float
    history: list[dict] = field(default_factory=list)
    model: object | None = None       # the best checkpoint's MLflow model (mlflow_model.LoggedCellViT)


class _Reporter(UserCallback):
    """Ray Train callback (runs in the Train controller): logs rank 0's metrics of every report
    and the checkpoint's validation pictures to MLflow, and passes a copy to the driver."""

    def __init__(self, uri: str, run_id: str, events):
        self.uri, self.run_id, self.events = uri, run_id, events

    def after_report(self, run_context, metrics, checkpoint):
        m = dict(metrics[0]) if metrics else {}
        step = int(m.get("epoch", 0))
        log_metrics(self.uri, self.run_id, m, step)
        path = None
        if checkpoint is not None:
            path = checkpoint.path
            with _checkpoint_files(checkpoint, "validation") as val:
                if val:
                    client(self.uri).log_artifacts(self.run_id, val, f"validation/epoch_{step:04d}")
        self.events.put({"metrics": m, "checkpoint": path})

    def after_exception(self, run_context, worker_exceptions):
        self.events.put({"error": {int(k): _why(v) for k, v in worker_exceptions.items()}})


#: What MLflow keeps of the best checkpoint: the weights and what they were trained on and
#: scored, not the optimiser's state (twice the weights' size, and only for resuming).
MODEL_FILES = ("model.pt", "metrics.json", "run.json")


@contextlib.contextmanager
def _checkpoint_files(checkpoint, *names: str):
    """A local path to only ``names`` (files or folders) of a Ray Train checkpoint, fetched from
    its filesystem instead of the whole checkpoint: with one name, that file or folder (in place
    when local), with several, a folder holding those that exist; None when none exists."""
    import pyarrow.fs as pafs

    fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    kinds = {n: fs.get_file_info(f"{root}/{n}").type for n in names}
    found = [n for n in names if kinds[n] != pafs.FileType.NotFound]
    if not found:
        yield None
    elif isinstance(fs, pafs.LocalFileSystem) and len(names) == 1:
        yield f"{root}/{names[0]}"
    else:
        with tempfile.TemporaryDirectory(prefix="stx-ckpt-") as tmp:
            for n in found:
                if kinds[n] == pafs.FileType.Directory:     # copy_files writes into an existing folder
                    os.makedirs(f"{tmp}/{n}")
                pafs.copy_files(f"{root}/{n}", f"{tmp}/{n}", source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
            yield f"{tmp}/{names[0]}" if len(names) == 1 else tmp


def _why(error: BaseException, keep: int = 400) -> str:
    """A worker's error in a line a person can read: its type and, for a failed health check,
    the failure under it (an actor's death and its cause), long tracebacks cut in the middle."""
    cause = getattr(error, "health_check_failure", None)
    text = f"{type(error).__name__}: " + (f"{type(cause).__name__}: {cause}" if cause is not None else str(error))
    return text if len(text) <= 2 * keep else f"{text[:keep]} ... {text[-keep:]}"


def _default_name(cfg: TrainConfig, label_set_id: str) -> str:
    return f"{cfg.model}-{label_set_id[:8] or 'labels'}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_inputs(dataset: str, validation: str, sample_ids=None) -> list[dict]:
    """The dataset's done slides (those of ``sample_ids`` when given); clear errors for a missing
    dataset, slide or validation fold."""
    from stx_platform.sources.pannuke import PanNukeFold

    if not storage.exists(storage.join(dataset, "manifest.json")):
        raise FileNotFoundError(f"{dataset}: no manifest.json (build the dataset first: stx build --out {dataset})")
    slides = done_slides(dataset)
    if not slides:
        raise ValueError(f"{dataset}/manifest.json: no slide was built successfully; nothing to train on")
    if sample_ids is not None:
        missing = sorted(set(sample_ids) - {s["sample_id"] for s in slides})
        if missing:
            raise ValueError(f"{dataset}/manifest.json: no done slide {', '.join(missing)}")
        slides = [s for s in slides if s["sample_id"] in set(sample_ids)]
    PanNukeFold(validation)       # raises SampleError naming the missing/bad file
    return slides


def read_run_info(storage_url: str, name: str | None) -> dict:
    """The ``stx_run.json`` of run ``name`` (what it trains on, its config, its MLflow run id)."""
    if not name:
        raise ValueError("resuming needs the run name (--name): the run's folder under the storage URL")
    url = storage.join(storage_url, name, RUN_INFO)
    if not storage.exists(url):
        raise FileNotFoundError(f"{url}: no such run to resume")
    return storage.read_json(url)


def uses_gpu(cfg: TrainConfig, cluster: dict) -> bool:
    """Whether the run trains on GPUs: as configured, else when the cluster has (or may add) any."""
    return cfg.use_gpu if cfg.use_gpu is not None else float(cluster.get("GPU", 0)) > 0


def check_resources(cfg: TrainConfig, cluster: dict) -> None:
    """Refuse a layout that cannot run: train workers plus the smallest ingest (its minimum of
    reader actors) must fit the cluster's CPUs, or Ray Data starves and training hangs."""
    readers = cfg.ingest_pool(uses_gpu(cfg, cluster))[0]
    need = cfg.num_workers * cfg.cpus_per_worker + cfg.ingest_cpus * readers
    have = float(cluster.get("CPU", 0))
    if need > have + 1e-9:
        raise ValueError(f"{cfg.num_workers} train worker(s) x {cfg.cpus_per_worker} CPU + ingest "
                         f"({readers} reader actor(s) x {cfg.ingest_cpus} CPU) need "
                         f"{need:g} CPUs, the Ray cluster has {have:g}: lower train.cpus_per_worker / "
                         "train.ingest_cpus or add CPUs")
    gpus = float(cluster.get("GPU", 0))
    if cfg.use_gpu and gpus < cfg.num_workers:
        raise ValueError(f"{cfg.num_workers} GPU worker(s) asked for, the Ray cluster has {gpus:g} GPU(s)")


def check_labels(dataset: str, slides: list[dict], label_set_id: str | None) -> None:
    """Every slide has a label table in the chosen set (None: the one it was built with)."""
    from stx_platform.build.manifest import label_path

    missing = [rel for rel in (s["label_table"] if label_set_id is None else label_path(label_set_id, s["sample_id"])
                               for s in slides) if not storage.exists(storage.join(dataset, rel))]
    if missing:
        raise FileNotFoundError(f"{dataset}: {len(missing)} of {len(slides)} slides have no label table for label "
                                f"set {label_set_id or '(as built)'}, e.g. {storage.join(dataset, missing[0])}; "
                                "label them first (stx build with that label config)")


def class_weights(slides: list[dict]) -> list[float]:
    """Type-loss weights (:data:`PANNUKE_TYPE_ORDER`) from the cells per label of the slides'
    records: median-frequency balancing of the classes the labels hold."""
    from collections import Counter

    from stx_platform.model import median_frequency_weights
    from stx_platform.taxonomy import PANNUKE_TYPE_ORDER

    counts: Counter = Counter()
    for s in slides:
        counts.update({k: int(v) for k, v in (s.get("labels") or {}).items()})
    return median_frequency_weights(counts, PANNUKE_TYPE_ORDER)


def run_training(dataset: str, validation: str, cfg: TrainConfig, *, storage_url: str, name: str | None = None,
                 resume: bool = False, label_set_id: str | None = None, mlflow_uri: str | None = None,
                 experiment: str = EXPERIMENT, on_epoch: Callable[[dict], None] | None = None,
                 mlflow_tags: dict | None = None, mlflow_params: dict | None = None, info: dict | None = None,
                 callbacks: list | None = None, sample_ids: list[str] | None = None,
                 register_model: str | None = None) -> TrainResult:
    """Train CellViT on ``dataset`` (a built dataset URL; only its slides ``sample_ids`` when given)
    with ``label_set_id`` (None: the labels the dataset was built with), validating on the PanNuke
    fold at ``validation`` every epoch.

    ``mlflow_tags``/``mlflow_params`` go to a new MLflow run beside the standard ones (a Tune trial
    tags its parent run), ``info`` into ``stx_run.json``; ``callbacks`` are extra Ray Train
    callbacks (a Tune trial passes ``TuneReportCallback``). The best checkpoint is logged as the
    run's MLflow model (:mod:`stx_platform.mlflow_model`), registered as ``register_model`` when
    given; the dataset, label set and validation fold are the run's dataset inputs."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    from stx_platform.mlflow_model import log_lineage, log_model
    from stx_platform.training.ingest import training_dataset

    t0 = time.time()
    dataset, validation, storage_url = (storage.absolute(u) for u in (dataset, validation, storage_url))
    if cfg.pretrained:
        cfg = cfg.model_copy(update={"pretrained": storage.absolute(cfg.pretrained)})
    slides = check_inputs(dataset, validation, sample_ids)
    manifest = storage.read_json(storage.join(dataset, "manifest.json"))
    label_override = label_set_id if label_set_id and label_set_id != manifest.get("label_set_id") else None
    check_labels(dataset, slides, label_override)
    label_set_id = label_set_id or manifest.get("label_set_id", "")
    cluster = capacity()
    check_resources(cfg, cluster)
    use_gpu = uses_gpu(cfg, cluster)
    uri = tracking_uri(mlflow_uri)
    run_dir = storage.join(storage_url, name) if name else None
    if resume:
        run_id = read_run_info(storage_url, name)["mlflow_run_id"]
    else:
        name = name or _default_name(cfg, label_set_id)
        run_dir = storage.join(storage_url, name)
        if storage.exists(storage.join(run_dir, RUN_INFO)):
            raise FileExistsError(f"{run_dir}: a run of that name exists; resume it (--resume --name {name}) "
                                  "or choose another name")
        c = client(uri)
        run = c.create_run(experiment_id(uri, experiment), run_name=name,
                           tags={"stx.kind": "train", "stx.dataset": dataset, "stx.label_set_id": label_set_id,
                                 **(mlflow_tags or {})})
        run_id = run.info.run_id
        log_params(uri, run_id, {**{f"train.{k}": v for k, v in cfg.model_dump().items()},
                                 "dataset": dataset, "validation": validation, "label_set_id": label_set_id,
                                 "patch_config_hash": manifest.get("patch_config_hash"),
                                 "markers_hash": manifest.get("markers_hash"), "slides": len(slides),
                                 "patches": sum(int(s.get("patches", 0)) for s in slides),
                                 **({} if sample_ids is None else {"sample_ids": ",".join(sorted(sample_ids))}),
                                 **(mlflow_params or {})})
        c.log_dict(run_id, manifest, "dataset/manifest.json")
        log_lineage(uri, run_id, dataset, label_set_id, validation, sample_ids)
        info = {"name": name, "mlflow_run_id": run_id, "tracking_uri": redact(uri), "dataset": dataset,
                "validation": validation, "label_set_id": label_set_id, "train": cfg.model_dump(mode="json"),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **({} if sample_ids is None else {"sample_ids": sorted(sample_ids)}), **(info or {})}
        storage.write_json(storage.join(run_dir, RUN_INFO), info)

    ds = training_dataset(dataset, label_override,
                          augment=cfg.augment, config=cfg.augmentation, seed=cfg.seed, batch_size=cfg.batch_size,
                          num_cpus=cfg.ingest_cpus, concurrency=cfg.ingest_pool(use_gpu),
                          samples_per_epoch=cfg.samples_per_epoch, sample_ids=sample_ids)
    storage_path, storage_fs = storage.arrow_filesystem(storage_url)
    events = Queue(actor_options={"num_cpus": 0})   # also fits inside a Tune trial's placement group
    run_info = {"dataset": dataset, "validation": validation, "label_set_id": label_set_id, "name": name,
                "mlflow_run_id": run_id}
    if cfg.class_balance:
        run_info["class_weights"] = class_weights(slides)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"train": cfg.model_dump(mode="json"), "run": run_info},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                                         checkpoint_score_attribute="score",
                                                         checkpoint_score_order="max"),
            callbacks=[_Reporter(uri, run_id, events), *(callbacks or ())]),
        datasets={"train": ds})

    history: list[dict] = []
    done = threading.Event()

    def pump():
        while not done.is_set() or not events.empty():
            try:
                ev = events.get(timeout=0.5)
            except Empty:
                continue
            if "metrics" in ev:
                history.append(ev["metrics"])
            if on_epoch:
                on_epoch(ev)

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    c = client(uri)
    try:
        result = trainer.fit()
    except Exception:
        c.set_terminated(run_id, "FAILED")
        raise
    finally:
        done.set()
        th.join(timeout=10)
    best = model = None
    best_metrics: dict = {}
    if result.best_checkpoints:
        ckpt, best_metrics = max(result.best_checkpoints,      # ties: the later epoch
                                 key=lambda cm: (cm[1].get("score", -1.0), cm[1].get("epoch", 0)))
        best = ckpt.path if storage_fs is None else storage.join(storage_url, ckpt.path[len(storage_path):].lstrip("/"))
        with _checkpoint_files(ckpt, *MODEL_FILES) as d:
            c.log_artifacts(run_id, d, "checkpoint_best")
            score = f"val_{cfg.metric}"
            model = log_model(uri, run_id, d, step=int(best_metrics.get("epoch", 0)), register=register_model,
                              tags={"stx.checkpoint": best, score: best_metrics.get(score)})
    c.set_terminated(run_id, "FINISHED")
    return TrainResult(run_dir, name, int((result.metrics or {}).get("epoch", 0)), dict(result.metrics or {}), best,
                       dict(best_metrics), run_id, redact(uri), time.time() - t0, history, model)
