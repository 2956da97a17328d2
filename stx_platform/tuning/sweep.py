"""Driver of a Tune sweep over label configs: checks the inputs, opens the MLflow parent run,
runs (or restores) the Tuner, then writes the summary and the best label config.

Layout under the storage URL (local folder or s3://):

    <storage>/<name>/stx_sweep.json        what is swept, with which configs, the MLflow parent run
    <storage>/<name>/tune/                 Ray Tune's experiment state (what --resume restores, once
                                           its pickles match what this machine wrote: tuning/trust.py)
    <storage>/<name>/runs/<trial id>/      each trial's training run (checkpoints) and labels.json
    <storage>/<name>/summary/              trials.csv, trials.md, metric_vs_params.png
    <storage>/<name>/best_labels.yaml      the best label config (a ``labels:`` section)

The caller owns ``ray.init``.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ray import tune

from stx_platform import storage
from stx_platform.capacity import DRIVER_RESOURCE, capacity
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.markers import load_markers
from stx_platform.tracking import client, experiment_id, log_metrics, log_params, redact, tracking_uri
from stx_platform.training.config import TrainConfig
from stx_platform.training.run import RUN_INFO, check_inputs, check_resources, uses_gpu
from stx_platform.tuning import summary as S
from stx_platform.tuning import trust
from stx_platform.tuning.config import SweepConfig
from stx_platform.tuning.trial import EXPERIMENT, LABELS_FILE, TrialContext, run_trial, runs_url

SWEEP_INFO = "stx_sweep.json"
TUNE_DIR = "tune"
TRIAL_CPUS = 0.01


@dataclass
class SweepResult:
    name: str
    sweep_dir: str
    metric: str
    trials: list[dict]
    best: dict | None
    best_config: str | None        # URL of best_labels.yaml
    summary: dict                  # URLs of the table and the picture, and the table as Markdown
    mlflow_run_id: str
    tracking_uri: str
    interrupted: bool
    seconds: float
    errors: list[str] = field(default_factory=list)
    model: dict = field(default_factory=dict)   # the best trial's MLflow model: uri, registered, note


def trial_dirname(trial) -> str:
    """Trial folders (and names) are the trial ids, so runs/<id> and tune/<id> line up."""
    return trial.trial_id


def default_concurrency(train: TrainConfig, cluster: dict) -> int:
    """Trials that fit at once: each holds its train workers and up to its largest ingest pool
    (and one driver slot, where the cluster has them)."""
    gpu = uses_gpu(train, cluster)
    need = train.num_workers * train.cpus_per_worker + train.ingest_cpus * train.ingest_pool(gpu)[1]
    n = int(float(cluster.get("CPU", 0)) // need) if need else 1
    if gpu:
        n = min(n, int(float(cluster.get("GPU", 0)) // train.num_workers))
    if cluster.get(DRIVER_RESOURCE, 0) > 0:
        n = min(n, int(float(cluster[DRIVER_RESOURCE]) // trial_resources(cluster)[DRIVER_RESOURCE]))
    return max(1, n)


def trial_resources(cluster: dict) -> dict[str, float]:
    """What a trial's actor asks for. It only waits on its labelling tasks and its TorchTrainer,
    which hold the CPUs, but Ray Train runs the run's controller on the trial's node: where the
    cluster offers :data:`DRIVER_RESOURCE` (cluster.yaml's head), one slot of it, so that neither
    lands on a spot worker whose reclaim would end the trial; elsewhere (a laptop) a sliver of a
    CPU (Tune refuses a trial without resources)."""
    if cluster.get(DRIVER_RESOURCE, 0) > 0:
        return {DRIVER_RESOURCE: 1.0}
    return {"CPU": TRIAL_CPUS}


class _Progress(tune.Callback):
    """One line per trial start, epoch, end or failure (instead of Tune's tables). The output
    function is the class's, set by each run: a restored sweep unpickles its callbacks, and they
    must print where the resuming caller asks."""

    out: Callable[[str], None] = print

    def __init__(self, metric: str, epochs: int):
        self.metric, self.epochs = metric, epochs

    def say(self, message: str) -> None:
        type(self).out(message)

    def on_trial_start(self, iteration, trials, trial, **info):
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        self.say(f"  trial {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.say(f"  trial {trial.trial_id} epoch {int(result.get('epoch', 0))}/{self.epochs}: "
                 f"val {self.metric} {_short(result.get('val_' + self.metric))}, bPQ {_short(result.get('val_bPQ'))}, "
                 f"macro F1 {_short(result.get('val_macro_f1'))}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = int((trial.last_result or {}).get("epoch", 0))
        early = " (stopped early by ASHA)" if epoch < self.epochs else ""
        self.say(f"  trial {trial.trial_id} finished at epoch {epoch}{early}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(f"  trial {trial.trial_id} FAILED (the sweep goes on): {_last_line(_trial_error(trial))}")


def _trial_error(trial) -> str:
    """The trial's error text: its local error file (written before this callback; the copy in the
    experiment's storage comes later)."""
    try:
        with open(trial.error_file) as f:
            return f.read()
    except (OSError, TypeError):
        return str(trial.get_error() or "")


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _last_line(err) -> str:
    lines = [ln for ln in str(err or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _trainable(ctx: TrialContext, db, resources: dict[str, float]):
    # the marker database goes to the trials once, through the object store
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx.model_dump(), db=db), resources)


def run_sweep(dataset: str, validation: str, sweep: SweepConfig, train: TrainConfig, labels: LabelConfig, *,
              storage_url: str, name: str | None = None, mlflow_uri: str | None = None,
              print_fn: Callable[[str], None] = print, callbacks: list | None = None,
              register_model: str | None = None) -> SweepResult:
    """Search label configs (from ``labels``, varied over ``sweep.space``) for the one whose labels
    train the best CellViT (``sweep.metric`` on the PanNuke fold ``validation``); the best
    trial's MLflow model is registered as ``register_model`` when given."""
    t0 = time.time()
    storage_url, dataset, validation = (storage.absolute(u) for u in (storage_url, dataset, validation))
    uri = tracking_uri(mlflow_uri)
    c = client(uri)
    slides = check_inputs(dataset, validation)
    train = train.model_copy(update={"metric": sweep.metric})
    name = name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = storage.join(storage_url, name)
    if storage.exists(storage.join(sweep_dir, SWEEP_INFO)):
        raise FileExistsError(f"{sweep_dir}: a sweep of that name exists; resume it (--resume --name {name}) "
                              "or choose another name")
    run = c.create_run(experiment_id(uri, EXPERIMENT), run_name=name,
                       tags={"stx.kind": "tune-sweep", "stx.dataset": dataset})
    parent = run.info.run_id
    log_params(uri, parent, {**{f"tune.{k}": v for k, v in sweep.model_dump(mode="json").items()},
                             "tune.algorithm": sweep.algorithm, "tune.trials": sweep.trials(),
                             **{f"train.{k}": v for k, v in train.model_dump().items()},
                             **{f"labels.{k}": v for k, v in labels.model_dump().items()},
                             "dataset": dataset, "validation": validation, "slides": len(slides)})
    info = {"name": name, "dataset": dataset, "validation": validation, "tune": sweep.model_dump(mode="json"),
            "train": train.model_dump(mode="json"), "labels": labels.model_dump(mode="json"),
            "mlflow_run_id": parent, "tracking_uri": redact(uri), "register_model": register_model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    storage.write_json(storage.join(sweep_dir, SWEEP_INFO), info)
    return _execute(info, sweep_dir, uri, False, print_fn, callbacks, t0)


def resume_sweep(storage_url: str, name: str | None, *, mlflow_uri: str | None = None,
                 print_fn: Callable[[str], None] = print, callbacks: list | None = None,
                 trust_storage: bool = False) -> SweepResult:
    """Continue the interrupted sweep ``name``: finished trials are kept, unfinished and failed
    ones continue from their last training checkpoint, the rest are started. Its saved state is
    unpickled only if this machine wrote it (:mod:`stx_platform.tuning.trust`) or
    ``trust_storage``."""
    t0 = time.time()
    if not name:
        raise ValueError("resuming needs the sweep's name (--name): its folder under the storage URL")
    sweep_dir = storage.join(storage.absolute(storage_url), name)
    if not storage.exists(storage.join(sweep_dir, SWEEP_INFO)):
        raise FileNotFoundError(f"{storage.join(sweep_dir, SWEEP_INFO)}: no such sweep to resume")
    info = storage.read_json(storage.join(sweep_dir, SWEEP_INFO))
    tune_url = storage.join(sweep_dir, TUNE_DIR)
    if storage.exists(tune_url):
        trust.check(tune_url, trust_storage)
    check_inputs(info["dataset"], info["validation"])
    uri = tracking_uri(mlflow_uri)
    client(uri).update_run(info["mlflow_run_id"], status="RUNNING")
    return _execute(info, sweep_dir, uri, True, print_fn, callbacks, t0)


def _execute(info: dict, sweep_dir: str, uri: str, resume: bool, print_fn, callbacks, t0: float) -> SweepResult:
    _Progress.out = staticmethod(print_fn)
    sweep, train = SweepConfig.model_validate(info["tune"]), TrainConfig.model_validate(info["train"])
    labels, name, parent = LabelConfig.model_validate(info["labels"]), info["name"], info["mlflow_run_id"]
    cluster = capacity()
    check_resources(train, cluster)
    ctx = TrialContext(sweep=name, sweep_dir=sweep_dir, dataset=info["dataset"], validation=info["validation"],
                       labels=info["labels"], train=info["train"], tracking_uri=uri, parent_run_id=parent,
                       cpus_per_slide=sweep.cpus_per_slide)
    db = load_markers(labels.markers)
    concurrency = sweep.max_concurrent_trials or default_concurrency(train, cluster)
    resources = trial_resources(cluster)
    if DRIVER_RESOURCE not in resources and _nodes() > 1:
        print_fn(f"stx tune: note: no node offers the {DRIVER_RESOURCE} resource (cluster.yaml gives it to the head), "
                 "so trials and their Ray Train controllers run wherever a sliver of CPU is free, spot workers "
                 f"included; start the head with --resources '{{\"{DRIVER_RESOURCE}\": 8}}' to keep them there")
    asha = sweep.early_stopping and train.epochs > sweep.grace_period
    if asha and not resume and not state_api_available():
        print_fn("stx tune: Ray's state API (the dashboard) is not available, so stopped trials could not "
                 "release their workers: early stopping (ASHA) is off for this sweep")
        asha = False
    path, fs = storage.arrow_filesystem(sweep_dir)
    tune_path = storage.join(path, TUNE_DIR)
    if resume and tune.Tuner.can_restore(tune_path, fs):
        print_fn(f"stx tune: resuming sweep {name} ({sweep.trials()} trials; finished ones are kept, unfinished "
                 "and failed ones continue from their last checkpoint)")
        tuner = tune.Tuner.restore(tune_path, _trainable(ctx, db, resources), resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        metric = f"val_{sweep.metric}"
        print_fn(f"stx tune: sweep {name}: {sweep.trials()} trial(s) of {sweep.algorithm} search over "
                 f"{', '.join(sweep.space)}; {train.epochs} epoch(s) each"
                 f"{' with ASHA early stopping' if asha else ''}; up to {concurrency} at once"
                 f"{f' on the {DRIVER_RESOURCE} node(s)' if DRIVER_RESOURCE in resources else ''}; "
                 f"maximising val {sweep.metric} -> {sweep_dir}")
        run_config = tune.RunConfig(name=TUNE_DIR, storage_path=path, storage_filesystem=fs, verbose=0,
                                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                    callbacks=[_Progress(sweep.metric, train.epochs), *(callbacks or ())])
        tuner = tune.Tuner(_trainable(ctx, db, resources), param_space=sweep.param_space(), run_config=run_config,
                           tune_config=tune.TuneConfig(
                               metric=metric, mode="max",
                               num_samples=1 if sweep.algorithm == "grid" else sweep.num_samples,
                               search_alg=_search(sweep, metric, concurrency),
                               scheduler=_scheduler(sweep, train) if asha else None,
                               # the variant generator limits itself (Tune ignores this for it)
                               max_concurrent_trials=concurrency if sweep.algorithm == "optuna" else None,
                               trial_dirname_creator=trial_dirname,
                               trial_name_creator=trial_dirname))
    try:
        results = tuner.fit()
    finally:
        trust.record(storage.join(sweep_dir, TUNE_DIR))
    # an interrupted sweep has trials that never ended, or never started
    interrupted = results.num_terminated + results.num_errors < max(len(results), sweep.trials())
    rows = [_row(r, sweep, train, sweep_dir, interrupted) for r in results]
    res = _finish(rows, sweep, labels, name, sweep_dir, uri, parent, interrupted, info.get("register_model"))
    res.seconds = time.time() - t0
    return res


def _nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def state_api_available() -> bool:
    """Whether Ray's state API answers. Ray Train frees the workers of a trial that Tune stopped
    through it; without it (a local Ray started without the dashboard) they would hold their CPUs
    until the sweep ends, so early stopping is left off."""
    from ray.util.state import list_actors

    try:
        list_actors(limit=1, timeout=10, raise_on_missing_output=False)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not available
        return False


def _scheduler(sweep: SweepConfig, train: TrainConfig):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=train.epochs, grace_period=sweep.grace_period,
                         reduction_factor=sweep.reduction_factor)


def _search(sweep: SweepConfig, metric: str, concurrency: int):
    if sweep.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode="max", seed=sweep.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency)


def _row(r, sweep: SweepConfig, train: TrainConfig, sweep_dir: str, interrupted: bool) -> dict:
    """One trial's line of the summary table."""
    trial = posixpath.basename(r.path.rstrip("/")) if r.path else "?"
    m = r.metrics or {}
    config = r.config or {}            # a trial created but not started when the sweep was stopped has none
    run_dir = storage.join(runs_url(sweep_dir), trial)
    lab = storage.read_json(storage.join(run_dir, LABELS_FILE)) if storage.exists(storage.join(run_dir, LABELS_FILE)) \
        else {}
    run = storage.read_json(storage.join(run_dir, RUN_INFO)) if storage.exists(storage.join(run_dir, RUN_INFO)) else {}
    epochs = int(m.get("epoch", 0) or 0)
    if r.error is not None:
        status = S.FAILED
    elif epochs >= train.epochs:
        status = S.COMPLETED
    else:
        status = S.UNFINISHED if interrupted else S.STOPPED
    key = f"val_{sweep.metric}"
    history = r.metrics_dataframe
    best = float(history[key].max()) if history is not None and key in history and len(history) else None
    return {"trial": trial, "status": status, "epochs": epochs, **{p: config.get(p) for p in sweep.space},
            sweep.metric: m.get(key), f"best_{sweep.metric}": best,
            "label_set": lab.get("label_set_id", ""), "reclustered": lab.get("reclustered"),
            "labels_s": lab.get("seconds"), "train_s": m.get("time_total_s"),
            "mlflow_run": run.get("mlflow_run_id", ""), "error": _last_line(r.error) if r.error is not None else ""}


def _finish(rows: list[dict], sweep: SweepConfig, labels: LabelConfig, name: str, sweep_dir: str, uri: str,
            parent: str, interrupted: bool, register_model: str | None = None) -> SweepResult:
    """Summary files, best config, and the MLflow bookkeeping (parent artifacts, trial run states,
    the best trial's model tagged on the parent and registered)."""
    c = client(uri)
    params = list(sweep.space)
    title = f"Sweep {name}: val {sweep.metric} of {len(rows)} trial(s)"
    summary = S.write_summary(storage.join(sweep_dir, "summary"), rows, params, sweep.metric, title)
    best = S.best_trial(rows, sweep.metric)
    best_url, model = None, {}
    if best is not None:
        best_url = storage.join(sweep_dir, "best_labels.yaml")
        storage.write_bytes(best_url, S.best_yaml(labels.model_dump(mode="json"), best, params, sweep.metric,
                                                  name).encode())
        log_metrics(uri, parent, {f"best_{sweep.metric}": best[sweep.metric]}, step=0)
        c.set_tag(parent, "stx.best_trial", best["trial"])
        model = _best_model(uri, parent, best, register_model)
    for r in rows:    # trials stopped by ASHA or by an interrupt never closed their MLflow run
        if r["mlflow_run"] and c.get_run(r["mlflow_run"]).info.status == "RUNNING":
            c.set_terminated(r["mlflow_run"], "FAILED" if r["status"] == S.FAILED else "KILLED")
            c.set_tag(r["mlflow_run"], "stx.trial_status", r["status"])
    for key in ("csv", "markdown", "plot"):
        with storage.local_copy(summary[key]) as local:
            c.log_artifact(parent, local, "summary")
    if best_url:
        with storage.local_copy(best_url) as local:
            c.log_artifact(parent, local)
    c.set_terminated(parent, "KILLED" if interrupted else "FINISHED")
    errors = [f"{r['trial']}: {r['error']}" for r in rows if r["status"] == S.FAILED]
    return SweepResult(name, sweep_dir, sweep.metric, rows, best, best_url, summary, parent, redact(uri),
                       interrupted, 0.0, errors, model)


def _best_model(uri: str, parent: str, best: dict, register_model: str | None) -> dict:
    """The best trial's MLflow model (its run's latest), tagged on the sweep's parent run and
    registered as ``register_model`` when given."""
    from stx_platform.mlflow_model import register_model as register
    from stx_platform.mlflow_model import run_model

    lm = run_model(uri, best["mlflow_run"]) if best.get("mlflow_run") else None
    if lm is None:
        return {"note": f"trial {best['trial']} logged no model"}
    out = {"uri": f"models:/{lm.model_id}", "registered": None, "note": ""}
    client(uri).set_tag(parent, "stx.best_model", out["uri"])
    if register_model:
        out["registered"], out["note"] = register(uri, register_model, lm.model_id)
    return out
