"""Shared fixtures: small synthetic datasets (built once per session), a real S3-compatible
server on loopback (moto), the real reference files in ../shared/ when present, and Ray kept
apart from every other Ray on the machine.

Every Ray the suite starts keeps its files under one private folder (``RAY_TMPDIR``), and a
``RAY_ADDRESS`` exported in the caller's shell does not send the suite to the caller's cluster.
A bystander head, started with ``ray start`` as README's users start one, runs through the whole
session with its address where ``ray.init()`` without an address would find and join it; at the
end it must still be alive and no driver may have joined it."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ.pop("RAY_ADDRESS", None)
os.environ["RAY_TMPDIR"] = RAY_TMPDIR = tempfile.mkdtemp(prefix="stx-", dir="/tmp")  # short: Ray's socket paths
os.environ["STX_TRUST_DIR"] = os.path.join(RAY_TMPDIR, "trusted-sweeps")  # not the user's ledger
# Ray >= 2.59 turns token authentication on for local clusters and, finding no token, writes a new
# one to ~/.ray/auth_token: heads started at once (each pytest worker's) overwrite each other's, and
# the job CLI then sends a token its head does not know. The suite's Rays share one token instead,
# in the suite's own folder (the user's file is never written), and every Ray process and client
# of the suite says token mode from the start (Ray reads the mode once per process).
_token = Path(RAY_TMPDIR) / "auth_token"
_token.write_text(secrets.token_hex(32))
_token.chmod(0o600)
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_token)
os.environ["RAY_AUTH_MODE"] = "token"
atexit.register(shutil.rmtree, RAY_TMPDIR, True)  # in every process that made one (xdist's too)
SHARED = Path(os.environ.get("STX_SHARED_DIR", REPO.parent / "shared"))
MARKERS = SHARED / "data" / "markers"
REAL_HE = SHARED / "data" / "real" / "he_histo_300x500.jpg"


def pytest_configure(config):
    # xdist's loadfile puts the modules with the most tests first; the Ray end-to-end modules have
    # few tests and take the longest, so they would start last and run alone at the end
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """The longest modules first (by their slow tests' ``seconds`` hints, 30 s each without one),
    so that the two pytest workers end together; the order within a module is kept."""
    weight: dict[str, float] = {}
    for item in items:
        mark = item.get_closest_marker("slow")
        weight.setdefault(item.nodeid.split("::")[0], 0.0)
        if mark:
            weight[item.nodeid.split("::")[0]] += float(mark.kwargs.get("seconds", 30))
    items.sort(key=lambda item: -weight[item.nodeid.split("::")[0]])


def need(path: Path):
    """Skip (with the reason) when a real reference file from ../shared/ is absent."""
    if not path.exists():
        pytest.skip(f"reference file {path} not present (set STX_SHARED_DIR to the shared/ folder)")
    return path


def _small_set(tmp_path_factory, layout: str) -> str:
    from stx_platform.synth.generate import generate_set, plan

    out = str(tmp_path_factory.mktemp(layout))
    specs = plan(slides=3, seed=7, organs=("breast", "colon", "lung"), cells=700)
    generate_set(out, specs, layout=layout, workers=1)
    return out


def count_calls(monkeypatch, module, names) -> dict[str, int]:
    """Count the calls of ``module``'s functions ``names`` (they still run)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*args, **kw)
        monkeypatch.setattr(module, name, counted)
    return calls


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the test process dies, so a killed suite leaves no head."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class RayHead:
    """A Ray node started by ``ray start --block`` on free ports: a head, or (``address``) a node
    joining that head's cluster. :meth:`stop` signals that one ``ray start`` process, whose
    handler stops its node's processes and nothing else (its children also die with it: Ray ties
    their fate to it); never the CLI's stop-everything command, which ends every Ray on the
    machine. :meth:`kill` ends every process of the node at once, as a reclaimed spot node."""

    def __init__(self, log: Path, env: dict | None = None, num_cpus: float = 1, dashboard: bool = False,
                 temp_dir: str | None = None, timeout: float = 180, address: str | None = None,
                 resources: dict | None = None):
        import json

        self.log = log
        self.temp_dir = temp_dir or os.path.join(RAY_TMPDIR, "ray")  # ray start's default, under RAY_TMPDIR
        self.dashboard_port = free_port() if dashboard and not address else None
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", num_cpus, "--disable-usage-stats",
               "--dashboard-agent-listen-port", free_port()]
        if address:        # a worker node
            cmd += ["--address", address]
        else:
            cmd += ["--head", f"--include-dashboard={str(dashboard).lower()}", "--port", free_port(),
                    "--ray-client-server-port", free_port()]
        if self.dashboard_port:
            cmd += ["--dashboard-host", "127.0.0.1", "--dashboard-port", self.dashboard_port]
        if resources:
            cmd += ["--resources", json.dumps(resources)]
        if temp_dir:
            cmd += ["--temp-dir", temp_dir]
        env = {**(os.environ if env is None else env), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        deadline = time.time() + timeout
        while "block forever" not in log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray start did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        self.address = address or (Path(self.temp_dir) / "ray_current_cluster").read_text().strip()
        self.logs = Path(os.path.realpath(Path(self.temp_dir) / "session_latest")) / "logs"

    def kill(self) -> None:
        """SIGKILL every process of the node (its ``ray start``'s session: the raylet, the agents,
        the workers, each of which Ray puts in its own process group) at once."""
        sid = self.proc.pid
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:                       # field 6 of stat: the session id
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(stat.parent.name), signal.SIGKILL)
        self.proc.wait(timeout=30)

    def alive(self) -> bool:
        """``ray start --block`` still runs (it exits when any of its processes dies unexpectedly)
        and the GCS accepts connections (a machine-wide stop would have ended it)."""
        host, port = self.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError:
            return False
        return self.proc.poll() is None

    def drivers(self) -> list[str]:
        """The drivers that have joined this cluster (each leaves its core-driver log in its logs)."""
        return sorted(p.name for p in self.logs.glob("python-core-driver-*"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.fixture(scope="session", autouse=True)
def bystander_head(tmp_path_factory):
    """Another Ray on the machine, as a user's ``ray start --head`` leaves one: the suite must
    neither join nor stop it."""
    head = RayHead(tmp_path_factory.mktemp("bystander") / "ray-start.log")
    yield head
    alive, drivers = head.alive(), head.drivers()
    head.stop()
    assert alive, f"the bystander Ray head died during the suite:\n{head.log.read_text()[-3000:]}"
    assert not drivers, f"drivers joined the bystander Ray head: {drivers}"


_BUILT: dict[tuple[str, int], tuple[str, list]] = {}


def build_small_dataset(out: str, hest_root: str, slides: int = 2) -> list:
    """The first ``slides`` samples of ``hest_root`` built into ``out`` with the paper's label
    config, with the manifest, as ``stx build`` writes them (without Ray); returns the slide
    records. Built once per test process and copied (a dataset holds no absolute path of its own)."""
    key = (hest_root, slides)
    if key not in _BUILT:
        first = tempfile.mkdtemp(prefix="built-", dir=RAY_TMPDIR)
        _BUILT[key] = first, _build_small_dataset(first, hest_root, slides)
    src, recs = _BUILT[key]
    shutil.copytree(src, out, dirs_exist_ok=True)
    return recs


def _build_small_dataset(out: str, hest_root: str, slides: int) -> list:
    from stx_platform.build import slide as B
    from stx_platform.build.manifest import write_manifest
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.markers import default_markers
    from stx_platform.patches.config import PatchConfig
    from stx_platform.sources import list_samples

    db = default_markers()
    recs = [B.build_slide(ref, out, PatchConfig(), LabelConfig(), db) for ref in list_samples(hest_root)[:slides]]
    assert all(r.status == "done" for r in recs), [r.error for r in recs]
    write_manifest(out, recs, {"source": hest_root, "label_set_id": recs[0].label_set_id,
                               "patch_config_hash": recs[0].patch_config, "markers_hash": db.content_hash()})
    return recs


@pytest.fixture(scope="session")
def hest_root(tmp_path_factory) -> str:
    """Three small HEST-layout slides, one per Xenium format generation (modern, v1, bytes)."""
    return _small_set(tmp_path_factory, "hest")


@pytest.fixture(scope="session")
def xenium_root(tmp_path_factory) -> str:
    """The same three slides as raw Xenium bundles."""
    return _small_set(tmp_path_factory, "xenium")


@pytest.fixture(scope="session")
def pannuke_dir(tmp_path_factory) -> str:
    from stx_platform.synth.pannuke import write_pannuke_fold

    out = str(tmp_path_factory.mktemp("pannuke"))
    write_pannuke_fold(out, n=14, seed=3)
    return out


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1; s3fs finds it through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    # its IAM holds AWS's managed policies (tests/test_iam.py runs Ray's launcher against it); set
    # before any moto backend exists, as moto reads it when it makes its IAM backend
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("stx-test")
    yield "s3://stx-test"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def local_ray(s3_server):
    """A local Ray (2 CPUs) started after the S3 settings are in the environment, which its workers
    inherit (as on a laptop; on a cluster the nodes' own credentials apply)."""
    from stx_platform.ray_session import ray_session

    with ray_session(num_cpus=2, join_env=False) as session:
        yield session
