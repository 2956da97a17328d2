"""Shared fixtures: small synthetic datasets (built once per session), a real S3-compatible
server on loopback (moto), and the real reference files in ../shared/ when present."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STX_SHARED_DIR", REPO.parent / "shared"))
MARKERS = SHARED / "data" / "markers"
REAL_HE = SHARED / "data" / "real" / "he_histo_300x500.jpg"


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


def build_small_dataset(out: str, hest_root: str, slides: int = 2) -> list:
    """Build the first ``slides`` samples of ``hest_root`` into ``out`` with the paper's label config
    and write the manifest, as ``stx build`` does (without Ray); returns the slide records."""
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
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
