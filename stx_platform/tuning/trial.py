"""One Tune trial (runs in a Tune trial actor): the sampled label settings relabel every training
slide from the stage caches (Ray tasks), then CellViT trains on that label set through the same
``run_training`` as ``stx train`` (a TorchTrainer launched from the trial, Ray Train V2's way),
with every epoch's validation metrics reported to Tune for ASHA and the search algorithm.

A trial's training run lives at ``<sweep>/runs/<trial id>``; a trial that is started again (a
resumed sweep, a retry after a failure) continues that run from its last checkpoint."""

from __future__ import annotations

import time

from pydantic import BaseModel
from ray.tune.integration.ray_train import TuneReportCallback

from stx_platform import storage
from stx_platform.build.label_sets import add_label_set
from stx_platform.labels.config import LabelConfig
from stx_platform.training.config import TrainConfig
from stx_platform.training.run import RUN_INFO, run_training

EXPERIMENT = "stx-tune"
LABELS_FILE = "labels.json"


class TrialContext(BaseModel):
    """What every trial of a sweep shares (sent to the trial actors with ``tune.with_parameters``)."""

    sweep: str                 # the sweep's name
    sweep_dir: str             # absolute URL of the sweep's folder
    dataset: str
    validation: str
    labels: dict               # base LabelConfig; the sampled values override it
    train: dict                # TrainConfig
    tracking_uri: str
    parent_run_id: str
    cpus_per_slide: float = 1.0


def runs_url(sweep_dir: str) -> str:
    return storage.join(sweep_dir, "runs")


def trial_labels(ctx: TrialContext, params: dict) -> LabelConfig:
    return LabelConfig.model_validate({**ctx.labels, **params})


def run_trial(params: dict, ctx: dict, db) -> None:
    """Tune function trainable: relabel with the marker database ``db`` (loaded once per sweep),
    train, report each epoch (through Ray Train's ``TuneReportCallback``)."""
    from ray import tune

    c = TrialContext.model_validate(ctx)
    trial_id = tune.get_context().get_trial_id()
    labels = trial_labels(c, params)
    t0 = time.perf_counter()
    label_set = add_label_set(c.dataset, labels, db, cpus_per_slide=c.cpus_per_slide)
    run_dir = storage.join(runs_url(c.sweep_dir), trial_id)
    resume = storage.exists(storage.join(run_dir, RUN_INFO))
    labels_url = storage.join(run_dir, LABELS_FILE)
    if not storage.exists(labels_url):   # what the labels cost the trial's first attempt
        storage.write_json(labels_url,
                           {**label_set.to_json(), "params": params, "wall_s": round(time.perf_counter() - t0, 2)})
    cfg = TrainConfig.model_validate(c.train)
    result = run_training(c.dataset, c.validation, cfg, storage_url=runs_url(c.sweep_dir),
                 name=trial_id, resume=resume, label_set_id=label_set.label_set_id, mlflow_uri=c.tracking_uri,
                 experiment=EXPERIMENT,
                 mlflow_tags={"mlflow.parentRunId": c.parent_run_id, "stx.kind": "tune-trial",
                              "stx.sweep": c.sweep, "stx.trial_id": trial_id},
                 mlflow_params={**{f"labels.{k}": v for k, v in labels.model_dump(exclude={"markers"}).items()},
                                "labels.reclustered_slides": label_set.reclustered,
                                "labels.computed_slides": label_set.computed,
                                "labels.seconds": round(label_set.seconds, 2)},
                 info={"sweep": c.sweep, "trial_id": trial_id, "params": params},
                 callbacks=[_EpochsToTune(cfg.epochs)])
    tune.report(dict(result.metrics))


class _EpochsToTune(TuneReportCallback):
    """Forwards every epoch's metrics to Tune except the last one, which the trial reports itself
    once its run is finalised: a Tune decision to stop a trial kills it, and one taken at the
    last epoch would kill the run before its best checkpoint and MLflow state are written."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and int(metrics[0].get("epoch", 0)) < self.epochs:
            super().after_report(run_context, metrics, checkpoint)
