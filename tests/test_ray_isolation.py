"""A local run starts its own Ray beside any other on the machine and stops only what it
started: the bystander head (conftest) is where ``ray.init()`` without an address would go."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, REPO

from stx_platform.ray_session import ray_session


def _armed(head) -> None:
    """The trap is set: the default temp dir's address file names the bystander."""
    import ray._common.utils as ray_utils

    assert Path(ray_utils.get_ray_address_file(None)).read_text().strip() == head.address


def _processes_of(folder: str) -> list[str]:
    """Command lines of running processes that name ``folder`` (Ray's GCS, raylet, agents do)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if folder in cmd:
            out.append(cmd[:200])
    return out


@pytest.mark.slow
def test_a_local_session_starts_its_own_ray_and_stops_only_that(bystander_head):
    """Also the state API (Ray Train asks it whether its controller lives, and frees the run's
    workers when not) answers for this Ray, from the driver and from a worker, not for the head
    that ``ray.init()`` without an address would find."""
    import ray
    from ray.util.state import get_actor

    @ray.remote(num_cpus=0)
    class Alive:
        def ping(self):
            return True

    @ray.remote
    def seen_from_a_worker(actor_id):
        return get_actor(actor_id, timeout=30) is not None

    _armed(bystander_head)
    with ray_session(num_cpus=1, dashboard=True, join_env=False) as s:
        assert s.local and s.address != bystander_head.address
        assert ray.cluster_resources()["CPU"] == 1  # not the bystander's, nor joined with it
        actor = Alive.remote()
        assert ray.get(actor.ping.remote())
        assert get_actor(actor._actor_id.hex(), timeout=30) is not None
        assert ray.get(seen_from_a_worker.remote(actor._actor_id.hex()))
        assert _processes_of(s.temp_dir)
    assert not ray.is_initialized()
    assert not os.path.exists(s.temp_dir) and not _processes_of(s.temp_dir)
    _armed(bystander_head)  # the caller's environment is as it was
    assert bystander_head.alive() and bystander_head.drivers() == []


@pytest.mark.slow
def test_stx_build_with_num_cpus_works_beside_a_running_head(bystander_head, hest_root, tmp_path):
    """Before: ``ray.init(num_cpus=2)`` found the head and refused ("When connecting to an existing
    cluster, num_cpus and num_gpus must not be provided")."""
    from stx_platform.sources import list_samples

    _armed(bystander_head)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([str(BIN / "stx"), "build", "--source", list_samples(hest_root)[0], "--out",
                        str(tmp_path / "ds"), "--num-cpus", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 done, 0 failed" in r.stdout
    assert bystander_head.alive() and bystander_head.drivers() == []
