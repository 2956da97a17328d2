"""Jobs through `ray job submit` against a local head node (`ray start --head`), as on a cluster.

Kept in its own module: `ray stop` ends every Ray on the machine, so no other test's Ray may be
running when it does (module-scoped Ray fixtures elsewhere are torn down by then)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stx_platform.sources import list_samples

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ray_job_submit_against_a_local_head(hest_root, pannuke_dir, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    bindir = Path(sys.executable).parent
    port = "6391"
    dash = "8291"
    subprocess.run([str(bindir / "ray"), "start", "--head", "--num-cpus", "2", "--port", port,
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", dash, "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=180)
    # Ray >= 2.59 turns token authentication on for local clusters; the job CLI sends the token
    # (from ~/.ray/auth_token) when told to
    env["RAY_AUTH_MODE"] = "token"
    try:
        out = tmp_path / "ds"
        r = subprocess.run([str(bindir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                            "--working-dir", str(REPO), "--", sys.executable, "jobs/build_dataset.py",
                            "--source", list_samples(hest_root)[0], "--out", str(out)],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "1 done, 0 failed" in r.stdout
        assert json.loads((out / "manifest.json").read_text())["done"] == 1

        r = subprocess.run([str(bindir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                            "--working-dir", str(REPO), "--", sys.executable, "jobs/train.py", "--dataset", str(out),
                            "--validation", pannuke_dir, "--storage", str(tmp_path / "runs"), "--name", "job",
                            "--mlflow", f"sqlite:///{tmp_path}/mlflow.db", "--set", "epochs=1",
                            "--set", "samples_per_epoch=8", "--set", "val_images=4"],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "epoch 1/1" in r.stdout and "preset tiny" in r.stdout
        assert (tmp_path / "runs" / "job" / "checkpoint_epoch_0001" / "model.pt").exists()

        r = subprocess.run([str(bindir / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                            "--working-dir", str(REPO), "--", sys.executable, "jobs/tune.py", "--dataset", str(out),
                            "--validation", pannuke_dir, "--storage", str(tmp_path / "sweeps"), "--name", "job",
                            "--mlflow", f"sqlite:///{tmp_path}/mlflow.db", "--set", "search=grid",
                            "--set", "space={tau_cancer: [0.2]}", "--set", "train.epochs=1",
                            "--set", "train.samples_per_epoch=8", "--set", "train.val_images=4"],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "finished at epoch 1" in r.stdout and "best: trial" in r.stdout
        assert "tau_cancer: 0.2" in (tmp_path / "sweeps" / "job" / "best_labels.yaml").read_text()
    finally:
        subprocess.run([str(bindir / "ray"), "stop", "--force"], capture_output=True, env=env, timeout=120)
