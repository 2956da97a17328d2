"""Tune sweeps over label configs: the search-space config, relabelling a built dataset from the
stage caches (a threshold-only change never reclusters), the summary and the best config, and
real sweeps on a local Ray (a failing trial does not end the sweep; an interrupted sweep resumes)."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import REPO, build_small_dataset, count_calls

from stx_platform import storage
from stx_platform.build import label_sets as L
from stx_platform.build.manifest import done_slides, label_path
from stx_platform.cli import _config_label_set
from stx_platform.labels import cluster as C
from stx_platform.labels.config import LabelConfig
from stx_platform.labels.markers import default_markers
from stx_platform.labels.table import read_label_table
from stx_platform.tracking import client
from stx_platform.training.config import TrainConfig
from stx_platform.tuning import summary as S
from stx_platform.tuning.config import Range, SweepConfig
from stx_platform.tuning import trust
from stx_platform.tuning.sweep import resume_sweep, run_sweep

QUICK_TRAIN = {"samples_per_epoch": 12, "val_images": 4, "val_batch_size": 4, "overlays": 1, "batch_size": 4,
               "shuffle_buffer": 8, "epochs": 1}


@pytest.fixture(scope="module")
def dataset(hest_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tune_ds"))
    build_small_dataset(out, hest_root)
    return out


@pytest.fixture(scope="module")
def ray_dashboard():
    """A local Ray (2 CPUs) with its dashboard, as ``stx tune`` starts one: Ray Train frees the
    workers of a stopped trial through the state API behind it."""
    from stx_platform.ray_session import ray_session

    with ray_session(num_cpus=2, dashboard=True, join_env=False) as session:
        yield session.address


def _train() -> TrainConfig:
    return TrainConfig.load(preset="tiny", overrides=[f"{k}={v}" for k, v in QUICK_TRAIN.items()])


# ---------------------------------------------------------------- config

def test_sweep_config_defaults_yaml_overrides_and_errors(tmp_path):
    d = SweepConfig()
    assert (d.metric, d.num_samples, d.early_stopping) == ("mPQ", 8, True)
    assert set(d.space) == {"resolution", "top_n", "top_m", "tau_vote", "min_z", "cancer_alpha", "hierarchy"}
    default = LabelConfig()
    for name, spec in d.space.items():   # every range/list holds the default's value
        v = getattr(default, name)
        assert v in spec if isinstance(spec, list) else spec.low <= v <= spec.high, name

    f = tmp_path / "sweep.yaml"
    f.write_text("tune:\n  metric: macro_f1\n  space:\n    tau_cancer: {low: 0.1, high: 0.3}\n"
                 "    top_n: [5, 10]\nlabels: {resolution: 3}\n")
    s = SweepConfig.load(str(f), ["num_samples=3", "space.top_m={low: 10, high: 12}"])
    assert (s.metric, s.num_samples, sorted(s.space)) == ("macro_f1", 3, ["tau_cancer", "top_m", "top_n"])
    assert s.space["tau_cancer"] == Range(low=0.1, high=0.3) and LabelConfig.load(str(f)).resolution == 3
    space = s.param_space()
    assert {space["top_m"].sample() for _ in range(200)} == {10, 11, 12}     # integer field, bounds inclusive
    assert all(0.1 <= space["tau_cancer"].sample() <= 0.3 for _ in range(50))

    one = SweepConfig.load(overrides=["space.tau_cancer=[0.2, 0.3]"])        # one entry of the default space
    assert one.space["tau_cancer"] == [0.2, 0.3] and one.space["resolution"] == [2.0, 4.0, 6.0]
    assert list(SweepConfig.load(overrides=["space={hierarchy: [true, false]}"]).space) == ["hierarchy"]

    grid = SweepConfig(search="grid", space={"resolution": [2.0, 4.0], "hierarchy": [True, False]})
    assert grid.trials() == 4 and grid.param_space()["resolution"] == {"grid_search": [2.0, 4.0]}
    with pytest.raises(ValueError, match="grid search needs a list of values for tau_cancer"):
        SweepConfig(search="grid", space={"tau_cancer": {"low": 0.1, "high": 0.3}})
    with pytest.raises(ValueError, match="'bogus' is not a label setting"):
        SweepConfig(space={"bogus": [1, 2]})
    with pytest.raises(ValueError, match="tau_cancer=1.5 is not a valid label setting"):
        SweepConfig(space={"tau_cancer": [0.2, 1.5]})
    with pytest.raises(ValueError, match="low < high"):
        SweepConfig(space={"tau_vote": {"low": 5, "high": 2}})


# ---------------------------------------------------------------- relabelling from the caches

def test_a_threshold_only_label_set_never_reclusters(dataset, monkeypatch):
    calls = count_calls(monkeypatch, C, ("knn", "leiden"))
    db = default_markers()
    base = LabelConfig()

    thresholds = base.model_copy(update={"cancer_alpha": 0.5, "top_m": 30, "tau_vote": 2.0, "min_z": 1.0})
    res = L.add_label_set(dataset, thresholds, db, use_ray=False)
    assert calls == {"knn": 0, "leiden": 0} and res.reclustered == 0 and res.computed == 2
    # the labels did change: at alpha = 0.5 weak cancer-gene enrichments make Epithelial clusters Neoplastic
    def neoplastic(set_id):
        return sum(read_label_table(f"{dataset}/{label_path(set_id, s['sample_id'])}")[0]["label"]
                   .eq("Neoplastic").sum() for s in done_slides(dataset))
    assert neoplastic(res.label_set_id) > neoplastic(base.label_set_id(db.content_hash()))

    new_r = base.model_copy(update={"resolution": 2.5})
    res = L.add_label_set(dataset, new_r, db, use_ray=False)
    assert calls == {"knn": 0, "leiden": 2} and res.reclustered == 2     # the kNN graph was cached
    again = new_r.model_copy(update={"cancer_alpha": 0.01})
    res = L.add_label_set(dataset, again, db, use_ray=False)
    assert calls == {"knn": 0, "leiden": 2} and res.reclustered == 0
    assert L.add_label_set(dataset, again, db, use_ray=False).computed == 0    # tables present: nothing to do
    # the set's folder says which settings made it, in a form build/train read back
    saved = LabelConfig.load(f"{dataset}/labels/{res.label_set_id}/label_config.yaml")
    assert saved == again


def test_a_slide_that_cannot_be_labelled_names_itself(dataset):
    bad = LabelConfig(min_cells=10**6)
    with pytest.raises(ValueError, match=r"labelling slide \w+ .*min_cells"):
        L.add_label_set(dataset, bad, default_markers(), use_ray=False)


# ---------------------------------------------------------------- summary, best config

def test_best_trial_prefers_completed_trials_and_its_yaml_is_accepted(tmp_path):
    rows = [{"trial": "a", "status": S.COMPLETED, "epochs": 3, "tau_cancer": 0.1, "mPQ": 0.30},
            {"trial": "b", "status": S.STOPPED, "epochs": 1, "tau_cancer": 0.2, "mPQ": 0.40},
            {"trial": "c", "status": S.COMPLETED, "epochs": 3, "tau_cancer": 0.35, "mPQ": 0.35},
            {"trial": "d", "status": S.FAILED, "epochs": 0, "tau_cancer": 0.3, "mPQ": None}]
    best = S.best_trial(rows, "mPQ")
    assert best["trial"] == "c"
    assert S.best_trial([rows[1], rows[3]], "mPQ")["trial"] == "b"     # none completed: best of the rest
    f = tmp_path / "best.yaml"
    f.write_text(S.best_yaml({"resolution": 3.0}, {**best, "label_set": "x"}, ["tau_cancer"], "mPQ", "sw"))
    cfg = LabelConfig.load(str(f))
    assert (cfg.resolution, cfg.tau_cancer) == (3.0, 0.35)
    assert _config_label_set(str(f)) == cfg.label_set_id(default_markers().content_hash())
    out = S.write_summary(str(tmp_path / "summary"), rows, ["tau_cancer"], "mPQ", "t")
    table = pd.read_csv(out["csv"])
    assert list(table["trial"]) == ["b", "c", "a", "d"]         # by metric, failures last
    assert open(out["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_unpickles_only_state_this_machine_wrote(tmp_path, monkeypatch):
    tune_dir = tmp_path / "sw" / "tune"
    (tune_dir / "trial_0").mkdir(parents=True)
    (tune_dir / "tuner.pkl").write_bytes(b"state")
    (tune_dir / "experiment_state-2026.json").write_text("{}")
    (tune_dir / "trial_0" / "params.pkl").write_bytes(b"params")
    (tune_dir / "trial_0" / "result.json").write_text("{}")
    url = str(tune_dir)
    with pytest.raises(trust.UntrustedSweepState, match="no record of writing.*--trust-storage"):
        trust.check(url)
    trust.check(url, trust_storage=True)
    trust.record(url)
    assert set(trust.state_digests(url)) == {"tuner.pkl", "experiment_state-2026.json", "trial_0/params.pkl"}
    trust.check(url)
    (tune_dir / "trial_0" / "result.json").write_text('{"more": 1}')   # results are not state
    trust.check(url)
    (tune_dir / "trial_0" / "params.pkl").write_bytes(b"os.system")    # someone else's pickle
    with pytest.raises(trust.UntrustedSweepState, match=r"1 state file\(s\) changed.*trial_0/params.pkl"):
        trust.check(url)
    monkeypatch.setenv("STX_TRUST_DIR", str(tmp_path / "another-machine"))
    trust.record(url)
    assert list((tmp_path / "another-machine").glob("*.json"))


def test_a_trial_created_but_never_started_is_an_unfinished_row(tmp_path):
    """Ctrl-C between two trials: Tune reports the next one with no config and no metrics."""
    from types import SimpleNamespace

    from stx_platform.tuning.sweep import _row

    r = SimpleNamespace(path=str(tmp_path / "tune" / "ac6c9359"), metrics=None, config=None, error=None,
                        metrics_dataframe=None)
    row = _row(r, SweepConfig(search="grid", space={"tau_cancer": [0.1, 0.3]}), _train(), str(tmp_path), True)
    assert (row["trial"], row["status"], row["epochs"], row["tau_cancer"]) == ("ac6c9359", S.UNFINISHED, 0, None)


# ---------------------------------------------------------------- sweeps on Ray

@pytest.mark.slow(seconds=110)
def test_sweep_relabels_trains_tracks_and_survives_a_failing_trial(dataset, pannuke_dir, tmp_path, ray_dashboard):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    lines = []
    # a resolution the dataset was not built with (each slide is reclustered in a Ray task), and a
    # config that cannot label a slide
    sweep = SweepConfig(search="grid", space={"resolution": [3.0], "min_cells": [50, 10**6]})
    res = run_sweep(dataset, pannuke_dir, sweep, _train(), LabelConfig(), storage_url=str(tmp_path / "sweeps"),
                    name="sw", mlflow_uri=uri, print_fn=lines.append, register_model="stx-test")
    rows = {r["min_cells"]: r for r in res.trials}
    assert len(rows) == 2 and not res.interrupted
    # the unlabellable config fails its trial with the reason; the sweep goes on
    assert rows[10**6]["status"] == S.FAILED and "min_cells" in rows[10**6]["error"]
    ok = [rows[50]]
    assert ok[0]["status"] in (S.COMPLETED, S.STOPPED) and ok[0]["epochs"] >= 1
    assert ok[0]["reclustered"] == 2 and ok[0]["label_set"] == \
        LabelConfig(resolution=3.0).label_set_id(default_markers().content_hash())
    assert any("FAILED (the sweep goes on)" in ln and "min_cells" in ln for ln in lines)
    assert any("epoch 1/1" in ln for ln in lines)

    # the best config is written, and training accepts it as a label set
    assert res.best["trial"] in {r["trial"] for r in ok}
    assert _config_label_set(res.best_config) == res.best["label_set"]
    for key in ("csv", "markdown", "plot"):
        assert storage.exists(res.summary[key])

    # MLflow: a parent run per sweep, a nested run per trial that trained, each closed
    c = client(uri)
    parent = c.get_run(res.mlflow_run_id)
    assert parent.info.status == "FINISHED" and f"best_{sweep.metric}" in parent.data.metrics
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} == {"best_labels.yaml", "summary"}
    nested = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res.mlflow_run_id}'")
    assert sorted(r.info.run_id for r in nested) == sorted(r["mlflow_run"] for r in ok)
    for r in nested:
        assert r.info.status in ("FINISHED", "KILLED")
        assert r.data.params["labels.resolution"] == "3.0" and "val_mPQ" in r.data.metrics
    # the best trial's model, tagged on the parent run, is the only one registered
    from stx_platform.mlflow_model import run_model

    best_model = run_model(uri, res.best["mlflow_run"])
    assert parent.data.tags["stx.best_model"] == res.model["uri"] == f"models:/{best_model.model_id}"
    assert res.model["registered"] == "stx-test/1"
    assert [v.run_id for v in c.search_model_versions("name = 'stx-test'")] == [res.best["mlflow_run"]]
    # nothing is left holding the cluster: every trial's workers were released
    import ray

    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < 2 - 1e-6 and time.time() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == pytest.approx(2)


@pytest.mark.slow(seconds=130)
def test_an_interrupted_sweep_resumes_without_redoing_finished_trials(dataset, pannuke_dir, tmp_path,
                                                                      ray_dashboard, monkeypatch):
    """Ctrl-C after the first trial, then --resume: Optuna's state comes back with the Tuner and
    proposes the second trial; the first is not trained again."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "stx_platform.cli", "tune", "--dataset", dataset, "--validation", pannuke_dir,
           "--storage", str(tmp_path / "sweeps"), "--name", "sw", "--mlflow", uri, "--address", ray_dashboard,
           "--preset", "tiny", "--set", "search=optuna", "--set", "num_samples=2",
           "--set", "space={tau_cancer: [0.1, 0.3]}",
           *[a for k, v in QUICK_TRAIN.items() for a in ("--set", f"train.{k}={v}")]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = []
    for line in proc.stdout:       # Ctrl-C once the first trial has finished
        out.append(line)
        if "finished at epoch" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, _ = proc.communicate(timeout=300)
    text = "".join(out) + rest
    assert proc.returncode == 130, text
    assert "interrupted" in text and "stx tune --resume --name sw" in text
    first = [ln.split()[1] for ln in out if "finished at epoch" in ln][0]

    with monkeypatch.context() as m:     # state this machine did not write is not unpickled
        m.setenv("STX_TRUST_DIR", str(tmp_path / "another-machine"))
        with pytest.raises(trust.UntrustedSweepState, match="--trust-storage"):
            resume_sweep(str(tmp_path / "sweeps"), "sw", mlflow_uri=uri)
    lines = []
    res = resume_sweep(str(tmp_path / "sweeps"), "sw", mlflow_uri=uri, print_fn=lines.append)
    assert not res.interrupted and len(res.trials) == 2
    assert all(r["status"] == S.COMPLETED and r["epochs"] == 1 for r in res.trials), res.trials
    # the finished trial was kept, not trained again: one MLflow run each, its steps logged once
    assert not any(f"trial {first} started" in ln for ln in lines)
    c = client(uri)
    nested = c.search_runs([c.get_run(res.mlflow_run_id).info.experiment_id],
                           f"tags.mlflow.parentRunId = '{res.mlflow_run_id}'")
    assert len(nested) == 2 and all(r.info.status == "FINISHED" for r in nested)
    done = next(r for r in nested if r.data.tags["stx.trial_id"] == first)
    assert [m.step for m in c.get_metric_history(done.info.run_id, "val_mPQ")] == [1]
    assert c.get_run(res.mlflow_run_id).info.status == "FINISHED"
    assert yaml.safe_load(open(res.best_config))["labels"]["tau_cancer"] in (0.1, 0.3)
