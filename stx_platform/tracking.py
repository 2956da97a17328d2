"""MLflow tracking: where runs go, and the Ray Train callback that logs every epoch.

The default tracking URI is a local sqlite file (``stx-data/mlflow.db``, artifacts beside it in
``stx-data/mlartifacts``); ``--mlflow URI`` or ``MLFLOW_TRACKING_URI`` name any other store
(a tracking server for clusters). Only the client API is used, so nothing depends on MLflow's
global "active run" state and several runs can be logged from one process.

MLflow keeps absolute artifact URIs in the database (each experiment's, run's, logged model's and
model version's ``file:///.../mlartifacts/...``) and has no root relative to the database. When
``stx-data/`` is moved, :func:`relocate` points them at the ``mlartifacts`` folder beside the
database again; :func:`experiment_id` does so itself when the old folder is gone, and refuses
to log into the old one when it is still there (a copy).
"""

from __future__ import annotations

import contextlib
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


def _sqlite_db(uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (as :func:`tracking_uri` made it), else None."""
    return "/" + uri[len("sqlite:///"):].lstrip("/") if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> str | None:
    """``file://`` URI of the ``mlartifacts`` folder beside a local sqlite store, else None."""
    db = _sqlite_db(uri)
    return "file://" + os.path.join(os.path.dirname(db), "mlartifacts") if db else None


def experiment_id(uri: str, name: str) -> str:
    """The experiment's id, created when missing (artifacts beside a local sqlite store). A local
    store moved with its artifacts is first :func:`relocate`d; one whose experiment still logs into
    another store's existing artifact folder is refused."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    root = artifact_root(uri)
    old = _moved_from(exp.artifact_location, name) if exp is not None and root else None
    if old is not None and not _same_folder(old, root):
        if os.path.isdir(old[len("file://"):]):
            raise ValueError(f"{redact(uri)}: experiment {name!r} keeps its artifacts in {old}, not beside this "
                             f"database in {root}: a copy of another stx-data/? Point it here with "
                             f"`stx mlflow-relocate --mlflow {redact(uri)}` (its artifacts must be in {root})")
        relocate(uri)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)


def _moved_from(location: str, name: str) -> str | None:
    """The ``mlartifacts`` root of an stx experiment's artifact location (``<root>/<name>``)."""
    suffix = f"/mlartifacts/{name}"
    if location.startswith("file:///") and location.endswith(suffix):
        return location[:-len(name) - 1]
    return None


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a[len("file://"):]) == os.path.realpath(b[len("file://"):])


#: Where MLflow 3 keeps artifact URIs: (table, column).
ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"), ("model_versions", "source"),
                    ("model_versions", "storage_location"))


def relocate(uri: str) -> dict[str, int]:
    """Point the artifact URIs of a local sqlite store's stx experiments (those whose artifacts
    were in an ``.../mlartifacts/<experiment>`` folder) at the ``mlartifacts`` folder beside the
    database, in one transaction. Returns the rows changed per ``table.column``; other
    experiments' locations (a custom one, S3) are left alone."""
    import sqlite3

    db, root = _sqlite_db(uri), artifact_root(uri)
    if db is None or not os.path.exists(db):
        raise ValueError(f"{redact(uri)}: not a local sqlite MLflow store")
    changed: dict[str, int] = {}
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        olds = {old for loc, name in con.execute("SELECT artifact_location, name FROM experiments")
                if (old := _moved_from(loc or "", name)) is not None and not _same_folder(old, root)}
        tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in ARTIFACT_COLUMNS:
            if table not in tables:
                continue
            n = 0
            for old in sorted(olds):
                n += con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 - fixed names
                                 f"WHERE substr({column}, 1, ?) = ?",
                                 (root, len(old) + 1, len(old) + 1, old + "/")).rowcount
            changed[f"{table}.{column}"] = n
    return changed


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
