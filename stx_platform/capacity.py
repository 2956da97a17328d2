"""What the Ray cluster can hold: the resources it has now or, on an autoscaling cluster
(``ray up cluster.yaml``), the most its node types add up to, whichever is larger.

Sizing from the resources present now would refuse GPU training on a cluster whose GPU workers
start at zero, and would build one slide at a time on a head node that runs no tasks. The
autoscaler's limits come from the cluster config: the one an autoscaler publishes in the GCS
(autoscaler v2, KubeRay) when there is one, else the cluster launcher's YAML on the head
(``~/ray_bootstrap_config.yaml``, which ``ray up`` writes there for the autoscaler it starts, or
the file ``STX_CLUSTER_CONFIG`` names): its ``available_node_types`` and ``max_workers``. A
cluster without either (a laptop, ``ray start`` by hand) has no autoscaler known here, and its
present resources are all there is.

Drivers that must outlive spot workers (Tune trials, and with them the Ray Train controllers
that Ray attaches to their node) ask for :data:`DRIVER_RESOURCE`, which cluster.yaml gives the
head node only."""

from __future__ import annotations

import functools
import os
import sys

#: Custom resource of the nodes where sweep trials (Train drivers) may run: cluster.yaml's head.
DRIVER_RESOURCE = "stx_driver"
#: Environment variable naming a cluster-launcher YAML to read the autoscaler's limits from.
CONFIG_ENV = "STX_CLUSTER_CONFIG"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def published_limits() -> dict[str, float]:
    """The limits an autoscaler published in the GCS ({} when none did: Ray's v1 autoscaler,
    which ``ray up`` starts, publishes nothing)."""
    try:
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a Ray without this reader: nothing published that we can read
        return {}
    return {k: float(v) for k, v in (limits or {}).items()}  # unbounded node types: sys.maxsize


def config_path() -> str | None:
    """The cluster-launcher YAML to read: ``STX_CLUSTER_CONFIG``, else the head's bootstrap config
    when it exists. A named file that does not exist is an error (a typo must not silently size
    the cluster as a laptop)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        if not os.path.exists(named):
            raise FileNotFoundError(f"{CONFIG_ENV}={named}: no such cluster config file")
        return named
    default = os.path.expanduser(BOOTSTRAP_CONFIG)
    return default if os.path.exists(default) else None


def limits_from_config(config: dict) -> dict[str, float]:
    """Per resource, the most a cluster-launcher config's nodes may hold at once: the head's
    resources plus, per resource, the worker types richest in it filled up to their own
    ``max_workers`` (the cluster's when unset) and the cluster's ``max_workers``. Node types without ``resources`` (left to
    the launcher's auto-detection) count for nothing."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total_workers = config.get("max_workers")
    total_workers = sys.maxsize if total_workers is None else int(total_workers)
    out: dict[str, float] = {}
    names = {k for t in types.values() for k in (t.get("resources") or {})}
    for key in names:
        value = float((types.get(head, {}).get("resources") or {}).get(key, 0))
        left = total_workers
        workers = sorted(((float((t.get("resources") or {}).get(key, 0)), int(t.get("max_workers", total_workers)))
                          for name, t in types.items() if name != head), reverse=True)
        for per_node, count in workers:
            n = min(count, left)
            if per_node <= 0 or n <= 0:
                continue
            value += per_node * n
            left -= n
        out[key] = value
    return out


def autoscaler_limits() -> dict[str, float]:
    """The most of each resource the autoscaler may provide ({} without an autoscaler known)."""
    published = published_limits()
    if published:
        return published
    path = config_path()
    if path is None:
        return {}
    return dict(_file_limits(path, os.stat(path).st_mtime_ns))


@functools.lru_cache(maxsize=8)
def _file_limits(path: str, mtime_ns: int) -> dict[str, float]:
    """:func:`limits_from_config` of a launcher YAML, read once per version of the file (a build
    asks for its size and its workers, and withdraws them, each through this)."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read the cluster config: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise ValueError(f"{path}: not a Ray cluster-launcher config (no available_node_types)")
    return limits_from_config(config)


def capacity() -> dict[str, float]:
    """Per resource, the larger of what the cluster has now and what its autoscaler may add up to."""
    import ray

    have = {k: float(v) for k, v in ray.cluster_resources().items()}
    for k, v in autoscaler_limits().items():
        have[k] = max(have.get(k, 0.0), v)
    return have


def request(bundles: list[dict[str, float]]) -> bool:
    """Ask the autoscaler for these resource bundles at once (the whole build's slide workers
    instead of one scale-up step at a time); ``[]`` withdraws the request. False, and nothing
    asked, without an autoscaler."""
    if not autoscaler_limits():
        return False
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
    return True
