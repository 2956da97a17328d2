"""A training checkpoint as an MLflow model (pyfunc from code, loaded with the project's own
weights-only loader), its registration, a run's dataset inputs, and a local store that keeps its
artifacts when stx-data/ is moved. Real sqlite stores in tmp_path; no Ray, no network."""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from test_predict import CLASSES, colour_maps, disc_scene, place_discs

from stx_platform import inference, storage
from stx_platform import mlflow_model as M
from stx_platform.cli import main
from stx_platform.model import build_model
from stx_platform.predict import predict_image_at
from stx_platform.tracking import client, experiment_id, tracking_uri
from stx_platform.training.checkpoint import load_trained_model, save_checkpoint


@pytest.fixture
def offline(monkeypatch):
    """Any connection attempt fails the test: logging and loading must not reach a network."""
    tried = []

    def refuse(self, address):
        tried.append(address)
        raise OSError(f"test is offline: connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield tried
    assert not tried, f"tried to connect to {tried}"


def _checkpoint(folder) -> str:
    torch.manual_seed(0)
    return str(save_checkpoint(folder, build_model("tiny"), 2, metrics={"epoch": 3, "val_mPQ": 0.1},
                               run={"dataset": "d"}))


def _store(root) -> tuple[str, str]:
    """A sqlite store under ``root`` as stx lays it out, and a run in its stx-train experiment."""
    uri = tracking_uri(f"sqlite:///{root}/mlflow.db")
    c = client(uri)
    run = c.create_run(experiment_id(uri, "stx-train"), run_name="r")
    c.log_param(run.info.run_id, "train.model", "tiny")
    return uri, run.info.run_id


def _scenes():
    rng = np.random.default_rng(3)
    out = []
    for _ in range(2):
        centres, radii = place_discs(300, 260, [], 12, rng)
        out.append(disc_scene(300, 260, centres, radii, [CLASSES[i % 4] for i in range(len(centres))])[0])
    return np.stack(out)


def test_a_checkpoint_logged_as_pyfunc_from_code_predicts_the_nuclei_stx_predict_finds(tmp_path, offline,
                                                                                       monkeypatch):
    ckpt = _checkpoint(tmp_path / "checkpoint_epoch_0003")
    uri, run_id = _store(tmp_path / "stx-data")
    logged = M.log_model(uri, run_id, ckpt, step=3, register="stx-test")
    assert logged.registered == "stx-test/1" and not logged.note
    c = client(uri)
    lm = c.get_logged_model(logged.model_id)
    assert (lm.name, lm.source_run_id, lm.status, lm.tags["stx.step"]) == ("model", run_id, LoggedModelStatus.READY, "3")
    assert lm.params["train.model"] == "tiny"
    assert [(o.model_id, o.step) for o in c.get_run(run_id).outputs.model_outputs] == [(logged.model_id, 3)]
    assert M.run_model(uri, run_id).model_id == logged.model_id
    # registered: version 1 of the run's model, stored where the logged model is (MLflow's SQL
    # registry keeps no model id of its own)
    mv = c.get_model_version("stx-test", "1")
    assert (mv.run_id, mv.source) == (run_id, lm.artifact_location) and logged.model_id in mv.source

    # from code, nothing pickled; the checkpoint files as its artifact; minimal pinned requirements
    path = mlflow.artifacts.download_artifacts(lm.artifact_location, dst_path=str(tmp_path / "dl"))
    files = {str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file()}
    assert {"MLmodel", "mlflow_model_code.py", "artifacts/checkpoint/model.pt", "artifacts/checkpoint/run.json",
            "artifacts/checkpoint/metrics.json", "requirements.txt", "input_example.json"} <= files, files
    assert not any(f.endswith(".pkl") for f in files), files
    reqs = open(f"{path}/requirements.txt").read().split()
    assert reqs == [f"mlflow=={mlflow.__version__}", "stx-platform==0.1.0", "torch==2.13.0"], reqs

    # loaded through the registry, by the project's loader: the checkpoint's weights
    model = mlflow.pyfunc.load_model(c.get_model_version_download_uri("stx-test", "1"))
    assert model.metadata.model_id == logged.model_id and model.metadata.run_id == run_id
    trained = load_trained_model(ckpt)
    net = model.unwrap_python_model().trained.model
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), trained.model.state_dict().values()))

    # the nuclei of a batch: those of the project's own predict path, image by image
    monkeypatch.setattr(inference, "predict_maps", colour_maps)
    images = _scenes()
    for params, mpp in (({}, None), ({"image_mpp": 0.5, "tile": 128, "overlap": 32}, 0.5)):
        out = model.predict(images, params=params)
        for i, rgb in enumerate(images):
            kw = {k: v for k, v in params.items() if k != "image_mpp"}
            want = predict_image_at(trained.model, rgb, mpp, class_names=trained.classes, **kw)
            got = out[out["image"] == i]
            assert len(got) == len(want) > 5
            for col in ("id", "class_name", "x", "y", "area", "prob_Neoplastic"):
                assert got[col].tolist() == want[col].tolist(), col
            assert got["contour"].tolist() == [c.tolist() for c in want["contour"]]
    with pytest.raises(mlflow.exceptions.MlflowException, match="uint8"):
        model.predict(images.astype(np.float32))


def test_registration_without_a_registry_is_a_one_line_note(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri, run_id = _store(tmp_path)
    ckpt = _checkpoint(tmp_path / "ckpt")

    def no_registry(self, *a, **k):
        raise MlflowException("Model Registry features are not supported by the store with URI\nsecond line")

    monkeypatch.setattr(MlflowClient, "create_registered_model", no_registry)
    logged = M.log_model(uri, run_id, ckpt, register="stx-test")
    assert logged.registered is None and M.run_model(uri, run_id).model_id == logged.model_id
    assert logged.note.startswith("not registered as 'stx-test'") and "\n" not in logged.note
    assert "not supported" in logged.note


def test_lineage_names_the_dataset_label_set_and_validation_fold(tmp_path):
    dataset, fold = tmp_path / "dataset", tmp_path / "fold"
    dataset.mkdir()
    fold.mkdir()
    (dataset / "manifest.json").write_text('{"label_set_id": "abc123"}')
    for n, size in (("images.npy", 10), ("masks.npy", 20), ("types.npy", 3)):
        (fold / n).write_bytes(b"\0" * size)
    uri, run_id = _store(tmp_path)
    M.log_lineage(uri, run_id, str(dataset), "abc123", str(fold), sample_ids=["S2", "S1"])
    inputs = client(uri).get_run(run_id).inputs.dataset_inputs
    got = {i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags}, i.dataset.source) for i in inputs}
    digest = hashlib.sha256((dataset / "manifest.json").read_bytes()).hexdigest()[:16]
    assert got["dataset"][0] == digest and str(dataset) in got["dataset"][2]
    assert got["dataset"][1] == {"mlflow.data.context": "training", "stx.kind": "dataset", "stx.sample_ids": "S1,S2"}
    assert got["labels-abc123"][0] == "abc123" and got["labels-abc123"][1]["stx.label_set_id"] == "abc123"
    assert str(dataset / "labels" / "abc123") in got["labels-abc123"][2]
    assert got["fold"][1]["mlflow.data.context"] == "validation"
    (fold / "types.npy").write_bytes(b"\0" * 4)       # another fold: another digest
    assert M.fold_digest(str(fold)) != got["fold"][0]


def test_a_moved_store_finds_its_artifacts_and_a_copy_is_refused_until_relocated(tmp_path):
    uri, run_id = _store(tmp_path / "a" / "stx-data")
    c = client(uri)
    (tmp_path / "note.txt").write_text("hello")
    c.log_artifact(run_id, str(tmp_path / "note.txt"))
    logged = M.log_model(uri, run_id, _checkpoint(tmp_path / "ckpt"), register="stx-test")

    def check(root):
        """The store under ``root`` reads and writes artifacts there, the registered model included."""
        u = tracking_uri(f"sqlite:///{root}/mlflow.db")
        assert experiment_id(u, "stx-train")
        cl = client(u)
        for where in (cl.get_experiment_by_name("stx-train").artifact_location, cl.get_run(run_id).info.artifact_uri,
                      cl.get_logged_model(logged.model_id).artifact_location,
                      cl.get_model_version_download_uri("stx-test", "1")):
            assert where.startswith(f"file://{root}/mlartifacts/stx-train"), where
        assert open(cl.download_artifacts(run_id, "note.txt", str(tmp_path / "dl"))).read() == "hello"
        assert mlflow.pyfunc.load_model(cl.get_model_version_download_uri("stx-test", "1")).metadata.run_id == run_id

    # moved: the old folder is gone, the next stx use points the store at its new place
    shutil.move(tmp_path / "a", tmp_path / "b")
    check(tmp_path / "b" / "stx-data")
    # copied: the original is still there, so logging into it is refused until relocated
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    copy = tracking_uri(f"sqlite:///{tmp_path}/c/stx-data/mlflow.db")
    with pytest.raises(ValueError, match="stx mlflow-relocate --mlflow"):
        experiment_id(copy, "stx-train")
    assert main(["mlflow-relocate", "--mlflow", copy]) == 0
    check(tmp_path / "c" / "stx-data")
    assert storage.exists(str(tmp_path / "b" / "stx-data" / "mlflow.db"))
    check(tmp_path / "b" / "stx-data")             # the original is untouched
