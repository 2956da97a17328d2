"""One way for a command, a benchmark or a test to get a Ray: join the cluster it was asked to
join (``address``, else ``RAY_ADDRESS``), else start a private local Ray.

``ray.init()`` without an address joins whatever cluster ``<temp dir>/ray/ray_current_cluster``
names (a head started with ``ray start``, or one killed without cleanup) and then refuses
``num_cpus``. A local run here asks for ``address="local"`` (always a new cluster: its GCS,
dashboard and agents on free ports) in its own temp dir, so it neither joins another Ray nor
touches its files (``ray_current_cluster``, ``session_latest``), and ``ray.shutdown()`` stops
exactly the processes it started (never the CLI's stop-everything, which ends every Ray on the machine).

Ray's state API (which Ray Train uses to tell whether its controller is alive, and then frees
its placement group) finds its cluster the same way as ``ray.init()``, not by the connection it
runs in: beside a ``ray start`` head it asks that head, and Ray Train would free the workers of
a live run. So the local Ray's processes and the driver get ``RAY_TMPDIR`` pointing at this
Ray's folder, whose address file names this Ray."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RaySession:
    """The Ray a session runs on: its GCS address, whether this session started it, and (for a
    local one) the temp dir holding its logs."""

    address: str
    local: bool
    temp_dir: str | None = None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, dashboard: bool = False,
                join_env: bool = True, say: Callable[[str], None] | None = None) -> Iterator[RaySession]:
    """Ray for the duration of the block, shut down afterwards.

    Joins ``address`` (or ``RAY_ADDRESS`` when ``join_env``); else starts a local Ray with
    ``num_cpus`` (default: all) and the dashboard when ``dashboard`` (Ray's state API behind it
    lets Ray Train release the resources of a stopped Tune trial). A Ray already initialised in
    this process is used as it is and left running. A local Ray's temp dir is removed when the
    block ends normally and kept, with its logs, when it raises (``say`` tells where).
    """
    import ray
    from ray._common.utils import get_default_system_temp_dir
    from ray._private.utils import write_ray_address

    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if ray.is_initialized():
        yield RaySession(ray.get_runtime_context().gcs_address, local=False)
        return
    join = address or (os.environ.get("RAY_ADDRESS") if join_env else None) or None
    base = saved_tmpdir = None
    if join:
        if num_cpus is not None:
            say(f"note: --num-cpus applies to a local Ray only; joining the cluster at {join}")
        ray.init(address=join, log_to_driver=False)
    else:
        # where Ray keeps its files by default (RAY_TMPDIR, TMPDIR on Linux, /tmp): short socket paths
        os.makedirs(get_default_system_temp_dir(), exist_ok=True)
        base = tempfile.mkdtemp(prefix="stx-ray-", dir=get_default_system_temp_dir())
        saved_tmpdir = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = base  # inherited by the raylet and so by every worker
        temp_dir = os.path.join(base, "ray")
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=False,
                     logging_level="ERROR", _temp_dir=temp_dir)
        except BaseException:
            _restore_tmpdir(saved_tmpdir)
            shutil.rmtree(base, ignore_errors=True)
            raise
        write_ray_address(ray.get_runtime_context().gcs_address, temp_dir)
    ray.data.DataContext.get_current().enable_progress_bars = False
    session = RaySession(ray.get_runtime_context().gcs_address, local=not join, temp_dir=base)
    ok = False
    try:
        yield session
        ok = True
    finally:
        ray.shutdown()
        if base:
            _restore_tmpdir(saved_tmpdir)
            if ok:
                shutil.rmtree(base, ignore_errors=True)
            else:
                say(f"the local Ray's logs: {base}/ray/session_*/logs")


def _restore_tmpdir(saved: str | None) -> None:
    if saved is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = saved
