"""The jobs as README's "Scaling out" gives them, through `ray job submit` against a local
multi-node cluster set up as cluster.yaml sets up its nodes: a head with no CPUs and the head's
custom resources (sweep trials go there), the MLflow server command from cluster.yaml (its
artifacts on S3) and MLFLOW_TRACKING_URI in the environment of `ray start`; CPU workers joined with
`ray start --address`, one of which is killed outright (a reclaimed spot node) while a slide is
built on it, and replaced by a fresh node as the autoscaler would.
Data, runs and sweeps live on S3 (a moto server on 127.0.0.1). The README's commands run
verbatim, with sizes appended that fit 2 CPUs (argparse keeps the last value of a repeated
option). Every node runs on free ports in its own temp dir and is stopped alone, leaving every
other Ray on the machine running."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import BIN, REPO, RAY_TMPDIR, RayHead, free_port

JOBS = ("synth", "build_dataset", "train", "tune", "experiment")

#: Appended to each README command so that it fits this machine.
FIT_2_CPUS = {
    "synth": ["--slides", "2", "--cells", "1000"],
    "build_dataset": [],
    "train": ["--preset", "tiny", "--set", "num_workers=1", "--set", "ingest_cpus=0.5", "--set", "ingest_actors=[1,2]",
              "--set", "epochs=1", "--set", "samples_per_epoch=8", "--set", "val_images=4"],
    "tune": ["--preset", "tiny", "--set", "search=grid", "--set", "space={tau_cancer: [0.2, 0.3]}",
             "--set", "train.num_workers=1", "--set", "train.ingest_actors=[1,1]", "--set", "train.epochs=1",
             "--set", "train.samples_per_epoch=8", "--set", "train.val_images=4"],   # 1 CPU a trial: both at once
    "experiment": ["--preset", "tiny", "--set", "train.num_workers=1", "--set", "train.ingest_cpus=0.5",
                   "--set", "train.ingest_actors=[1,2]", "--set", "train.epochs=1", "--set", "train.samples_per_epoch=8",
                   "--set", "train.val_images=4", "--set", "train.class_balance=true",
                   "--overlays", "2"],
}


def readme_jobs() -> dict[str, str]:
    """job name -> its `ray job submit` line in README's Scaling out section."""
    section = (REPO / "README.md").read_text().split("## Scaling out")[1].split("\n## ")[0]
    cmds = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("ray job submit")]
    return {re.search(r"jobs/(\w+)\.py", c).group(1): c for c in cmds}


def cluster_mlflow_server(port: int, home: Path, bucket: str) -> str:
    """cluster.yaml's MLflow server command, on loopback, a free port, a test home and bucket."""
    head = " ".join(yaml.safe_load((REPO / "cluster.yaml").read_text())["head_start_ray_commands"])
    cmd = re.search(r"(mlflow server [^>]*?)\s*>", head).group(1)
    cmd = cmd.replace("--host 0.0.0.0", "--host 127.0.0.1").replace("--port 5000", f"--port {port}")
    cmd = cmd.replace("$HOME", str(home)).replace("s3://YOUR-BUCKET", bucket)
    assert f"--port {port}" in cmd and str(home) in cmd and bucket in cmd, cmd
    return cmd + " --workers 1"  # one server process of its default 4 fits 2 CPUs


def test_readme_gives_every_job_and_each_takes_address():
    assert set(readme_jobs()) == set(JOBS)
    for job in JOBS:
        sub = ["table2"] if job == "experiment" else []     # its options are per table
        r = subprocess.run([sys.executable, f"jobs/{job}.py", *sub, "--help"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and "--address" in r.stdout, (job, r.stdout[-2000:] + r.stderr[-2000:])


def test_a_ray_job_refuses_relative_data_locations(monkeypatch, tmp_path, capsys):
    """Under `ray job submit --working-dir`, a relative path lands in the job's temporary copy of
    its files: refused with the options to change, before anything is written there."""
    from stx_platform.cli import build_parser, check_job_locations, main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["build"]) == 2
    err = capsys.readouterr().err
    assert "--source stx-data/hest" in err and "--out stx-data/dataset" in err and str(tmp_path) in err, err
    assert not (tmp_path / "stx-data").exists(), "the default source was generated in the job's files"
    assert main(["train", "--dataset", "s3://b/ds", "--validation", "/data/fold3", "--storage", "s3://b/runs"]) == 2
    err = capsys.readouterr().err
    assert "--mlflow sqlite:///stx-data/mlflow.db" in err and "--dataset" not in err, err
    parse = build_parser().parse_args
    check_job_locations(parse(["train", "--dataset", "s3://b/ds", "--validation", "/data/fold3", "--storage",
                               "s3://b/runs", "--mlflow", "http://head:5000"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://head:5000")    # as cluster.yaml sets it on every node
    check_job_locations(parse(["build", "--source", "s3://b/hest", "--out", "/shared/ds"]))
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")                  # not a job: relative paths are fine
    check_job_locations(parse(["build"]))


class LocalCluster:
    """cluster.yaml's node types on this machine: its head (no CPUs, its custom resources), and
    CPU workers of 1 CPU each that can be added and killed."""

    def __init__(self, tmp_path: Path, env: dict):
        cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
        head = dict(cfg["available_node_types"][cfg["head_node_type"]]["resources"])
        self.tmp, self.env, self.workers = tmp_path, env, []
        # a dead node is noticed after 3 missed health checks 1 s apart (Ray's default: 5, 3 s apart)
        fast = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.head = RayHead(tmp_path / "ray-head.log", env={**env, **fast}, num_cpus=head.pop("CPU"), resources=head,
                            dashboard=True, temp_dir=tempfile.mkdtemp(prefix="head-", dir=RAY_TMPDIR))
        self.dashboard = f"http://127.0.0.1:{self.head.dashboard_port}"

    def add_worker(self) -> RayHead:
        i = len(self.workers)
        node = RayHead(self.tmp / f"ray-worker-{i}.log", env=self.env, num_cpus=1, address=self.head.address,
                       resources={f"test_node_{i}": 1}, temp_dir=tempfile.mkdtemp(prefix=f"w{i}-", dir=RAY_TMPDIR))
        self.workers.append(node)
        return node

    def node_ids(self) -> dict[str, object]:
        """Ray node id -> the RayHead of this cluster running it ("head" for the head)."""
        from ray.util.state import list_nodes

        out = {}
        for n in list_nodes(address=self.dashboard, detail=True, limit=100):
            if n.is_head_node:
                out[n.node_id] = "head"
            for k in n.resources_total:
                if k.startswith("test_node_"):
                    out[n.node_id] = self.workers[int(k.rsplit("_", 1)[1])]
        return out

    def kill_node_running(self, task: str, proc: subprocess.Popen, timeout: float = 240) -> str:
        """Once a running task whose name holds ``task`` is on a worker node, kill that node and
        start a replacement; returns the killed node's id."""
        from ray.util.state import list_tasks

        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            running = list_tasks(address=self.dashboard, filters=[("state", "=", "RUNNING")], limit=1000)
            ids = self.node_ids()
            on_worker = [t.node_id for t in running if task in (t.name or "") and ids.get(t.node_id) not in (None, "head")]
            if on_worker:
                ids[on_worker[0]].kill()
                self.add_worker()
                return on_worker[0]
            time.sleep(0.5)
        raise AssertionError(f"no {task} task ran on a worker node (job exit status {proc.poll()})")

    def stop(self) -> None:
        for node in self.workers:
            node.stop()
        self.head.stop()


@pytest.fixture
def head_node(s3_server, tmp_path):
    """A local cluster shaped like cluster.yaml's, with its MLflow server; yields (env for the job
    CLI, MLflow URI, the cluster)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_S3_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]}
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "home" / "mlflow").mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen(["bash", "-c", "exec " + cluster_mlflow_server(port, tmp_path / "home", s3_server)],
                              env=env, stdout=open(tmp_path / "mlflow.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    cluster = None
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "mlflow.log").read_text()[-2000:]
                time.sleep(0.5)
        cluster = LocalCluster(tmp_path, {**env, "MLFLOW_TRACKING_URI": uri})
        for _ in range(2):
            cluster.add_worker()
        # the job CLI and the state API send the suite's token (conftest: RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH)
        yield {**env, "RAY_ADDRESS": cluster.dashboard}, uri, cluster
    finally:
        if cluster:
            cluster.stop()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


E_LINE = re.compile(r"^\[\S+ \S+ E \d+ \d+\]", re.M)     # Ray's C++ error lines: [date time E pid tid]


@pytest.mark.slow(seconds=300)
def test_readme_jobs_on_a_head_node_with_data_on_s3(head_node, s3_server):
    import fsspec

    from stx_platform.sources import list_samples
    from stx_platform.tracking import client

    env, uri, cluster = head_node
    data = f"{s3_server}/jobs"
    cmds = readme_jobs()

    def start(job: str, extra: tuple = (), cmd: str | None = None, fit: bool = True) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", (cmd or cmds[job]) + ' "$@"', "job", *(FIT_2_CPUS[job] if fit else ()),
                                 *extra], cwd=REPO, env={**env, "DATA": data}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def finish(job: str, proc: subprocess.Popen) -> str:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, (job, out[-6000:])
        return out

    def submit(job: str, extra: tuple = (), cmd: str | None = None) -> str:
        return finish(job, start(job, extra, cmd))

    # a job whose data would land in its temporary working dir is refused, and says so
    out, _ = start("build_dataset", cmd="ray job submit --working-dir . -- python jobs/build_dataset.py",
                   fit=False).communicate(timeout=600)
    assert "--source stx-data/hest" in out and "s3:// URLs or absolute paths" in out, out[-3000:]

    out = submit("synth")
    assert "one Ray task per slide on the Ray cluster" in out and "wrote 2 slide(s)" in out
    assert len(list_samples(f"{data}/hest")) == 2
    assert "wrote 64 images" in out

    # a worker node is lost while it builds a slide: the slide is built again on the others
    proc = start("build_dataset")
    cluster.kill_node_running("build_row", proc)
    out = finish("build_dataset", proc)
    assert "2 done, 0 failed" in out
    assert not E_LINE.search(out) and "deprecat" not in out.lower(), out[-6000:]

    out = submit("train")
    assert "epoch 1/1" in out and "preset tiny" in out and f"at {uri}" in out
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert fs.glob(f"{data}/runs/*/checkpoint_epoch_0001/model.pt".removeprefix("s3://"))

    out = submit("tune")
    assert out.count("finished at epoch 1") == 2 and "best: trial" in out and "on the stx_driver node(s)" in out
    [best] = fs.glob(f"{data}/sweeps/*/best_labels.yaml".removeprefix("s3://"))
    assert yaml.safe_load(fs.cat(best))["labels"]["tau_cancer"] in (0.2, 0.3)
    # the trials, and with them every Ray Train controller (the train job's too), ran on the head
    from ray.util.state import list_actors

    ids = cluster.node_ids()
    where = {}
    for a in list_actors(address=cluster.dashboard, detail=True, limit=10000):
        where.setdefault(a.class_name, set()).add("head" if ids.get(a.node_id) == "head" else "worker")
    assert where["TrainController"] == {"head"} and where["ImplicitFunc"] == {"head"}, where

    # Table 2 from the built dataset (colon held out), the PanNuke model on the synthetic fold
    # (README names fold1, which this test does not write); then Table 3 reuses both models
    out = submit("experiment", ("--pannuke-train", f"{data}/pannuke/fold3"))
    assert "held out: colon" in out and "| ST model |" in out and "| PanNuke model |" in out
    t2 = json.loads(fs.cat(f"{data}/experiment/table2.json"))
    assert list(t2) == ["ST model", "PanNuke model"]
    assert all({"dice", "jaccard", "bPQ", "f1", "precision", "recall"} <= set(v) for v in t2.values())
    out = submit("experiment", ("--pannuke-train", f"{data}/pannuke/fold3", "--methods", "Ours"),
                 cmd=cmds["experiment"].replace(" table2 ", " table3 "))
    assert out.count("trained before with these settings") == 2
    t3 = json.loads(fs.cat(f"{data}/experiment/table3.json"))
    assert list(t3) == ["Ours", "ST model", "PanNuke model"] and len({v["n_cells"] for v in t3.values()}) == 1
    assert fs.exists(f"{data}/experiment/table2/st/overlays.png")

    # every run reached the cluster's MLflow server, and their artifacts its S3 destination
    c = client(uri)
    train_runs = c.search_runs([c.get_experiment_by_name("stx-train").experiment_id])
    assert [r.info.status for r in train_runs] == ["FINISHED"] and "val_mPQ" in train_runs[0].data.metrics
    tune_runs = c.search_runs([c.get_experiment_by_name("stx-tune").experiment_id])
    assert len(tune_runs) == 3  # the sweep's parent run and its two trials
    assert fs.glob(f"{s3_server}/stx/mlflow/**".removeprefix("s3://"))
    exp = c.get_experiment_by_name("stx-experiment").experiment_id
    runs = c.search_runs([exp])
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("stx.kind") == "experiment"}
    assert sorted(r.data.tags["stx.table"] for r in parents.values()) == ["table2", "table3"]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert len(nested) == 4 and all(r.info.status == "FINISHED" for r in runs)   # per table, one run per model
    assert all(any(k.startswith(("heldout_", "table3_")) for k in r.data.metrics) for r in nested)
