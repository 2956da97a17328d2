"""cluster.yaml against Ray's own cluster-config schema once edited as README says, its node
types, and how the jobs size themselves on an autoscaling cluster (one that starts with no GPU
and no worker CPUs) versus a fixed one."""

import re

import pytest
import yaml
from readme_cluster import edited_copy, readme_edit, scaling_out, validate_for_ray


@pytest.fixture(scope="module")
def cluster_config(tmp_path_factory) -> dict:
    """cluster.yaml after the README's edit, run on a copy."""
    text = (edited_copy(tmp_path_factory.mktemp("cluster")) / "cluster.yaml").read_text()
    assert "YOUR-" not in text, "a placeholder the README's edit leaves in cluster.yaml"
    return yaml.safe_load(text)


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher(cluster_config):
    prepared = validate_for_ray(cluster_config)
    assert prepared["provider"]["type"] == "aws"
    assert "YOUR-" not in scaling_out().replace(readme_edit(), ""), \
        "README's scaling-out commands still hold a cluster.yaml placeholder"


def test_node_types_split_labelling_from_training(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head should run no tasks"
    workers = {k: v for k, v in types.items() if k != cluster_config["head_node_type"]}
    cpu = [v for v in workers.values() if not v["resources"].get("GPU")]
    gpu = [v for v in workers.values() if v["resources"].get("GPU")]
    assert cpu and gpu
    for t in cpu:   # autoscaled from nothing, on spot
        assert t["min_workers"] == 0 < t["max_workers"]
        assert t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    for t in gpu:
        assert t["min_workers"] == 0 < t["max_workers"]
        assert "gpu" in t["docker"]["worker_image"]
        assert any("pip install" in c and "constraints.txt" in c and "whl/cpu" not in c
                   for c in t["worker_setup_commands"]), "GPU nodes need torch's CUDA build"
    # S3 access on every worker through the workers' own profile (tests/test_iam.py); the head
    # names none, so the launcher gives it its default one (EC2 to launch workers)
    for t in workers.values():
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/stx-worker", t["node_config"]["IamInstanceProfile"]["Arn"])
    assert "IamInstanceProfile" not in head["node_config"]
    # this repository on every node, installed with the tested pins unless the baked image has
    # them (tests/test_image.py)
    assert cluster_config["file_mounts"] == {"~/stx-platform": "."}
    assert any("-c ~/stx-platform/constraints.txt" in c and "-e ~/stx-platform" in c and "$STX_IMAGE_PINS" in c
               for c in cluster_config["setup_commands"])
    # MLflow: a server on the head with artifacts on S3, known to every Ray process
    head_cmds = " ".join(cluster_config["head_start_ray_commands"])
    assert re.search(r"mlflow server .*--artifacts-destination s3://", head_cmds)
    for cmds in (cluster_config["head_start_ray_commands"], cluster_config["worker_start_ray_commands"]):
        assert any("MLFLOW_TRACKING_URI=http://" in c and "ray start" in c for c in cmds)


@pytest.fixture
def autoscaler(local_ray):
    """The cluster config an autoscaler publishes in the GCS: up to 12 CPU nodes (16 CPUs) and
    2 GPU nodes (48 CPUs, 4 GPUs), none running yet: the state right after `ray up cluster.yaml`."""
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    cfg = autoscaler_pb2.ClusterConfig()
    for name, count, res in (("cpu_worker", 12, {"CPU": 16}), ("gpu_worker", 2, {"CPU": 48, "GPU": 4})):
        g = cfg.node_group_configs.add()
        g.name, g.min_count, g.max_count = name, 0, count
        g.resources.update(res)
    key, ns = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()
    internal_kv._internal_kv_put(key, cfg.SerializeToString(), overwrite=True, namespace=ns)
    yield
    internal_kv._internal_kv_del(key, namespace=ns)


def test_jobs_size_by_what_the_autoscaler_may_add(autoscaler, hest_root, tmp_path, monkeypatch):
    import ray.autoscaler.sdk

    from stx_platform.build.run import run_build, slide_workers
    from stx_platform.capacity import capacity
    from stx_platform.cli import _train_config, build_parser
    from stx_platform.labels.config import LabelConfig
    from stx_platform.patches.config import PatchConfig
    from stx_platform.sources import list_samples
    from stx_platform.training.config import TrainConfig
    from stx_platform.training.run import check_resources
    from stx_platform.tuning.sweep import default_concurrency

    cap = capacity()
    assert cap["GPU"] == 8 and cap["CPU"] == 12 * 16 + 2 * 48
    four_gpus = TrainConfig(num_workers=4, use_gpu=True)
    check_resources(four_gpus, cap)              # no GPU now, but the cluster may add 8
    with pytest.raises(ValueError, match="12 GPU worker"):
        check_resources(TrainConfig(num_workers=12, use_gpu=True), cap)
    assert default_concurrency(four_gpus, cap) == 2   # Tune: two 4-GPU trials at once
    assert slide_workers(51, 1.0) == 51 and slide_workers(400, 1.0) == 288 and slide_workers(51, 1.0, 16) == 16
    args = build_parser().parse_args(["train", "--preset", "auto"])
    assert _train_config(args, []).preset == "cellvit"

    asked = []
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: asked.append(bundles))
    out = tmp_path / "ds"
    lines = []
    manifest = run_build(list_samples(hest_root)[0], str(out), PatchConfig(), LabelConfig(), print_fn=lines.append)
    assert manifest["done"] == 1
    assert asked == [[{"CPU": 1.0}], []], "the slide workers are asked for up front, then the request withdrawn"
    assert any("asked the autoscaler for 1 slide worker" in ln for ln in lines)


def test_without_an_autoscaler_the_present_resources_are_all(local_ray):
    import ray

    from stx_platform.build.run import slide_workers
    from stx_platform.capacity import capacity, request
    from stx_platform.training.config import TrainConfig
    from stx_platform.training.run import check_resources

    assert capacity() == {k: float(v) for k, v in ray.cluster_resources().items()}
    assert slide_workers(51, 1.0) == 2 and slide_workers(51, 0.5) == 4
    with pytest.raises(ValueError, match="has 0 GPU"):
        check_resources(TrainConfig(num_workers=1, use_gpu=True), capacity())
    assert request([{"CPU": 1.0}]) is False
