"""What the Ray cluster can hold: the resources it has now or, on an autoscaling cluster
(``ray up cluster.yaml``), the most its node types add up to, whichever is larger.

Sizing from the resources present now would refuse GPU training on a cluster whose GPU workers
start at zero, and would build one slide at a time on a head node that runs no tasks. The
autoscaler's limits come from the cluster config it publishes in the GCS, read the way Ray Train
reads them for its own resource check; a cluster without an autoscaler (a laptop, ``ray start``
by hand) has none and its present resources are all there is."""

from __future__ import annotations

def autoscaler_limits() -> dict[str, float]:
    """The most of each resource the autoscaler may provide ({} without an autoscaler)."""
    try:
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - an older/newer Ray without it: no autoscaler known
        return {}
    return {k: float(v) for k, v in (limits or {}).items()}  # unbounded node types: sys.maxsize


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
