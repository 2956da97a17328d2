"""A trained CellViT as an MLflow model, its registration, and the lineage of a training run.

**The model.** The best checkpoint of a run is logged as a pyfunc *model from code*
(:data:`CODE`, a file that calls ``mlflow.models.set_model``): nothing is cloudpickled. The
checkpoint's ``model.pt``, ``metrics.json`` and ``run.json`` are the model's ``checkpoint``
artifact, loaded by the project's own :func:`~stx_platform.training.checkpoint.load_trained_model`
(``torch.load(weights_only=True)``), on CUDA when there is one.

``predict`` takes H&E RGB uint8 images as one array (N, H, W, 3) of any size at 0.25 um/px, or at
``params["image_mpp"]``, and returns the nuclei of all of them as one table, what ``stx predict
--image`` finds (:func:`stx_platform.predict.
predict_image_at`, tiled with overlap): ``image`` (index in the batch), ``id`` (1..n per image),
``class``, ``class_name``, ``x``, ``y`` (centroid, image px), ``area`` (px), ``prob_<class>``, and
``contour`` as a list of [x, y] vertices (JSON-friendly, for serving). Params: ``tile``,
``overlap``, ``batch_size``, ``image_mpp``.

Requirements are this package and torch, pinned as the package pins them (MLflow adds
itself); MLflow infers nothing, so logging runs no subprocess and reaches no network. The
package is not on PyPI: a serving environment installs it from this repository
(``pip install -c constraints.txt .``).

**Logging** uses the client API only (no active run, no global tracking URI): the model is saved
with ``mlflow.pyfunc.save_model``, then attached to the run as a logged model (MLflow 3:
``models:/<model id>``, shown under the run's "Logged models"), and optionally registered.

**Lineage.** The run's dataset inputs: the built dataset (its URL; digest: sha256 of its
``manifest.json``), the label set (digest: the label set id, a hash of the label config and
markers) and the validation fold (digest: sha256 over its files' names and sizes).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import posixpath
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import mlflow.pyfunc
import numpy as np
import pandas as pd

from stx_platform import storage
from stx_platform.predict import MODEL_MPP
from stx_platform.tracking import client, redact

#: The logged model's name in its run.
MODEL_NAME = "model"
#: The model-from-code file (copied into every logged model).
CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlflow_model_code.py")
#: predict()'s params and their defaults (those of ``stx predict``).
PARAMS = {"tile": 256, "overlap": 64, "batch_size": 8, "image_mpp": MODEL_MPP}
DISTRIBUTION = "stx-platform"


class NucleiModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of a training checkpoint: H&E images in, a table of nuclei out."""

    def load_context(self, context):
        import torch

        from stx_platform.training.checkpoint import load_trained_model

        self.trained = load_trained_model(context.artifacts["checkpoint"],
                                          "cuda" if torch.cuda.is_available() else "cpu")

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        from stx_platform.predict import predict_image_at

        p = {**PARAMS, **(params or {})}
        images = np.asarray(model_input)
        if images.ndim != 4:
            raise ValueError(f"expected RGB uint8 images (N, H, W, 3), got shape {images.shape}")
        parts = []
        for i, rgb in enumerate(images):
            df = predict_image_at(self.trained.model, rgb, float(p["image_mpp"]), MODEL_MPP, tile=int(p["tile"]),
                                  overlap=int(p["overlap"]), batch_size=int(p["batch_size"]),
                                  class_names=self.trained.classes)
            df.insert(0, "image", np.full(len(df), i, np.int64))
            parts.append(df)
        out = pd.concat(parts, ignore_index=True)
        out["contour"] = [np.asarray(c, np.float64).tolist() for c in out["contour"]]
        return out


def signature(classes: list[str]):
    """Input: a uint8 tensor (N, H, W, 3); output: the nucleus table's columns; the params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

    d = DataType
    cols = [("image", d.long), ("id", d.integer), ("class", d.long), ("class_name", d.string), ("x", d.double),
            ("y", d.double), ("area", d.long), *((f"prob_{c}", d.double) for c in classes)]
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([*(ColSpec(t, n) for n, t in cols), ColSpec(Array(Array(d.double)), "contour")]),
        params=ParamSchema([ParamSpec(k, d.double if isinstance(v, float) else d.long, v)
                            for k, v in PARAMS.items()]))


def pip_requirements() -> list[str]:
    """This package at its installed version, and torch as the package pins it."""
    version = importlib.metadata.version(DISTRIBUTION)
    torch = next((r.split(";")[0].strip() for r in importlib.metadata.requires(DISTRIBUTION) or ()
                  if r.replace(" ", "").startswith("torch==")), None)
    if torch is None:
        import torch as _torch

        torch = f"torch=={_torch.__version__.split('+')[0]}"
    return [f"{DISTRIBUTION}=={version}", torch]


@dataclass
class LoggedCellViT:
    """A checkpoint logged as an MLflow model, and what became of its registration."""

    model_id: str
    model_uri: str                 # models:/<model id>
    registered: str | None = None  # "<name>/<version>" when registered
    note: str = ""                 # why it was not registered, when it was asked to be


def log_model(uri: str, run_id: str, checkpoint_dir: str, *, step: int = 0, register: str | None = None,
              tags: dict | None = None) -> LoggedCellViT:
    """Log the local checkpoint folder ``checkpoint_dir`` (model.pt, metrics.json, run.json) as
    the model :data:`MODEL_NAME` of run ``run_id`` at ``step`` (the checkpoint's epoch), and
    register it as ``register`` when given (see :func:`register_model`)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    from stx_platform.training.checkpoint import load_trained_model

    c = client(uri)
    run = c.get_run(run_id)
    classes = load_trained_model(checkpoint_dir).classes
    tags = {"stx.step": step, **(tags or {})}
    lm = c.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
                               params=dict(run.data.params), tags={k: str(v) for k, v in tags.items() if v is not None})
    try:
        with tempfile.TemporaryDirectory(prefix="stx-mlflow-model-") as tmp:
            path, ckpt = os.path.join(tmp, MODEL_NAME), os.path.join(tmp, "checkpoint")
            shutil.copytree(checkpoint_dir, ckpt)        # the artifact's folder takes this name
            mlflow.pyfunc.save_model(
                path, python_model=CODE, artifacts={"checkpoint": ckpt},
                signature=signature(classes), input_example=np.full((1, 16, 16, 3), 255, np.uint8),
                pip_requirements=pip_requirements(),
                mlflow_model=Model(artifact_path=lm.artifact_location, run_id=run_id, model_id=lm.model_id,
                                   model_uuid=lm.model_id))
            c.log_model_artifacts(lm.model_id, path)
    except BaseException:
        c.finalize_logged_model(lm.model_id, LoggedModelStatus.FAILED)
        raise
    c.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
    c.log_outputs(run_id, [LoggedModelOutput(lm.model_id, step)])
    out = LoggedCellViT(lm.model_id, f"models:/{lm.model_id}")
    if register:
        out.registered, out.note = register_model(uri, register, lm.model_id)
    return out


def register_model(uri: str, name: str, model_id: str) -> tuple[str | None, str]:
    """A new version of registered model ``name`` (created when missing) for logged model
    ``model_id``: ``("<name>/<version>", "")``, or ``(None, why)`` in one line when the store
    cannot register (no Model Registry behind it, a refused name).

    The version's source is the logged model's artifact location, not ``models:/<id>``: MLflow's
    SQL registry resolves the latter through the process-wide tracking URI, not this client's."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        lm = c.get_logged_model(model_id)
        try:
            c.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = c.create_model_version(name, lm.artifact_location, run_id=lm.source_run_id, model_id=model_id)
    except MlflowException as e:
        first = (str(e.message).strip().splitlines() or [type(e).__name__])[0]
        return None, f"not registered as {name!r} in {redact(uri)}: {first}"
    return f"{name}/{mv.version}", ""


def run_model(uri: str, run_id: str):
    """The latest :data:`MODEL_NAME` logged model of run ``run_id`` (None when it has none)."""
    c = client(uri)
    run = c.get_run(run_id)
    found = c.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}' AND "
                                   f"name = '{MODEL_NAME}'", order_by=[{"field_name": "creation_time",
                                                                         "ascending": False}], max_results=1)
    return found[0] if found else None


# ---------------------------------------------------------------- lineage

def _source(url: str):
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():       # a local path matches MLflow's "" and "file" sources alike
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(url)


def fold_digest(validation: str) -> str:
    """sha256 over the PanNuke fold's file names and sizes (reads no pixel)."""
    from stx_platform.sources.pannuke import _locate

    files = sorted(_locate(validation).items())
    text = "\n".join(f"{name}\t{storage.size(url)}" for name, url in files)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def log_lineage(uri: str, run_id: str, dataset: str, label_set_id: str, validation: str,
                sample_ids: list[str] | None = None) -> None:
    """The training run's inputs as MLflow datasets: the built dataset, its label set (both in
    context ``training``) and the validation fold (context ``validation``)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    def entry(url: str, name: str, digest: str, context: str, kind: str, **tags) -> DatasetInput:
        ds = MetaDataset(_source(url), name=name or kind, digest=digest)
        tags = {MLFLOW_DATASET_CONTEXT: context, "stx.kind": kind, **tags}
        return DatasetInput(Dataset(**ds.to_dict()), [InputTag(k, str(v)) for k, v in tags.items()])

    manifest = hashlib.sha256(storage.read_bytes(storage.join(dataset, "manifest.json"))).hexdigest()[:16]
    extra = {} if sample_ids is None else {"stx.sample_ids": ",".join(sorted(sample_ids))}
    inputs = [entry(dataset, posixpath.basename(dataset.rstrip("/")), manifest, "training", "dataset", **extra)]
    if label_set_id:
        inputs.append(entry(storage.join(dataset, "labels", label_set_id), f"labels-{label_set_id}",
                            label_set_id[:36], "training", "label_set", **{"stx.label_set_id": label_set_id}))
    inputs.append(entry(validation, posixpath.basename(validation.rstrip("/")), fold_digest(validation),
                        "validation", "validation_fold"))
    client(uri).log_inputs(run_id, inputs)
