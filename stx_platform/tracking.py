"""MLflow tracking: where runs go, and the Ray Train callback that logs every epoch.

The default tracking URI is a local sqlite file (``stx-data/mlflow.db``, artifacts beside it in
``stx-data/mlartifacts``); ``--mlflow URI`` or ``MLFLOW_TRACKING_URI`` name any other store
(a tracking server for clusters). Only the client API is used, so nothing depends on MLflow's
global "active run" state and several runs can be logged from one process.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

DEFAULT_TRACKING_URI = "sqlite:///stx-data/mlflow.db"
#: Default Model Registry name of trained CellViT models (stx train / stx tune --register-model).
REGISTERED_MODEL = "stx-cellvit"


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else the local default; a relative sqlite path is made
    absolute (Ray actors run elsewhere) and its folder created."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        path = rest if rest.startswith("/") else os.path.abspath(rest)   # sqlite:////abs vs sqlite:///rel
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        uri = "sqlite:///" + path
    return uri


def redact(uri: str) -> str:
    """The URI without user info (never log credentials)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return uri


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(uri: str, name: str) -> str:
    """The experiment's id, created when missing (artifacts beside a local sqlite store)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        db = "/" + uri[len("sqlite:///"):].lstrip("/")
        location = "file://" + os.path.join(os.path.dirname(db), "mlartifacts", name)
    return c.create_experiment(name, artifact_location=location)


def finite_metrics(values: Mapping) -> dict[str, float]:
    """Numeric, finite entries (MLflow rejects the rest)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


def log_metrics(uri: str, run_id: str, values: Mapping, step: int) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    client(uri).log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in finite_metrics(values).items()])


def log_params(uri: str, run_id: str, params: Mapping) -> None:
    from mlflow.entities import Param

    client(uri).log_batch(run_id, params=[Param(str(k), str(v)[:6000]) for k, v in params.items()])
