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
    from stx_platform.capacity import DRIVER_RESOURCE

    assert head["resources"]["CPU"] == 0, "the head should run no tasks"
    assert head["resources"][DRIVER_RESOURCE] >= 1, "sweep trials (Train drivers) belong on the head"
    assert not any(DRIVER_RESOURCE in t["resources"] for k, t in types.items() if k != cluster_config["head_node_type"])
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


def _publish(cfg_dict: dict):
    """Publish a cluster config in the GCS the way autoscaler v2 / KubeRay do; returns an undo."""
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    cfg = autoscaler_pb2.ClusterConfig()
    for name, t in cfg_dict["available_node_types"].items():
        if name == cfg_dict["head_node_type"]:
            continue
        g = cfg.node_group_configs.add()
        g.name, g.min_count, g.max_count = name, t["min_workers"], t["max_workers"]
        g.resources.update({k: int(v) for k, v in t["resources"].items()})
    key, ns = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode()
    internal_kv._internal_kv_put(key, cfg.SerializeToString(), overwrite=True, namespace=ns)
    return lambda: internal_kv._internal_kv_del(key, namespace=ns)


@pytest.fixture(params=["published in the GCS", "the launcher's YAML on the head"])
def autoscaler(request, local_ray, cluster_config, tmp_path, monkeypatch):
    """cluster.yaml's autoscaler, as a job on its head sees it right after `ray up`: up to 12 CPU
    nodes (16 CPUs) and 2 GPU nodes (48 CPUs, 4 GPUs), none running yet. Either published in the
    GCS (autoscaler v2, KubeRay) or, as the v1 autoscaler that `ray up` starts leaves it, only in
    the cluster config the launcher wrote on the head (here named by STX_CLUSTER_CONFIG)."""
    if request.param.startswith("published"):
        undo = _publish(cluster_config)
        yield
        undo()
    else:
        path = tmp_path / "ray_bootstrap_config.yaml"
        path.write_text(yaml.safe_dump(cluster_config))
        monkeypatch.setenv("STX_CLUSTER_CONFIG", str(path))
        yield


def test_jobs_size_by_what_the_autoscaler_may_add(autoscaler):
    from stx_platform.build.run import slide_workers
    from stx_platform.capacity import capacity
    from stx_platform.cli import _train_config, build_parser
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


def test_a_build_asks_the_autoscaler_for_its_slide_workers_up_front(local_ray, cluster_config, hest_root, tmp_path,
                                                                    monkeypatch):
    import ray.autoscaler.sdk

    from stx_platform.build.run import run_build
    from stx_platform.labels.config import LabelConfig
    from stx_platform.patches.config import PatchConfig
    from stx_platform.sources import list_samples

    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(cluster_config))
    monkeypatch.setenv("STX_CLUSTER_CONFIG", str(path))
    asked = []
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda bundles: asked.append(bundles))
    lines = []
    manifest = run_build(list_samples(hest_root)[0], str(tmp_path / "ds"), PatchConfig(), LabelConfig(),
                         print_fn=lines.append)
    assert manifest["done"] == 1
    assert asked == [[{"CPU": 1.0}], []], "the slide workers are asked for up front, then the request withdrawn"
    assert any("asked the autoscaler for 1 slide worker" in ln for ln in lines)


def test_limits_from_a_launcher_config_respect_every_max_workers():
    from stx_platform.capacity import limits_from_config

    cfg = {"head_node_type": "head", "max_workers": 3,
           "available_node_types": {"head": {"resources": {"CPU": 0, "stx_driver": 8}},
                                    "cpu": {"resources": {"CPU": 16}, "max_workers": 12},
                                    "gpu": {"resources": {"CPU": 48, "GPU": 4}, "max_workers": 2},
                                    "auto": {"max_workers": 5, "node_config": {}}}}
    # 3 workers at most: the two GPU nodes hold the most CPUs, then one CPU node
    assert limits_from_config(cfg) == {"CPU": 2 * 48 + 16, "GPU": 8, "stx_driver": 8}
    del cfg["max_workers"]          # each type's own limit
    assert limits_from_config(cfg) == {"CPU": 2 * 48 + 12 * 16, "GPU": 8, "stx_driver": 8}


def test_a_named_cluster_config_must_exist_and_be_one(local_ray, tmp_path, monkeypatch):
    from stx_platform.capacity import capacity

    monkeypatch.setenv("STX_CLUSTER_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="STX_CLUSTER_CONFIG=.*missing.yaml"):
        capacity()
    (tmp_path / "c.yaml").write_text("provider: {type: aws}\n")
    monkeypatch.setenv("STX_CLUSTER_CONFIG", str(tmp_path / "c.yaml"))
    with pytest.raises(ValueError, match="c.yaml: not a Ray cluster-launcher config"):
        capacity()


def test_sweep_trials_ask_for_the_heads_driver_slots():
    from stx_platform.capacity import DRIVER_RESOURCE
    from stx_platform.training.config import TrainConfig
    from stx_platform.tuning.sweep import TRIAL_CPUS, default_concurrency, trial_resources

    cluster = {"CPU": 288.0, "GPU": 8.0, DRIVER_RESOURCE: 2.0}
    assert trial_resources(cluster) == {DRIVER_RESOURCE: 1.0}     # no CPU: nothing asked of the workers
    assert trial_resources({"CPU": 2.0}) == {"CPU": TRIAL_CPUS}   # a laptop
    assert default_concurrency(TrainConfig(num_workers=1, use_gpu=True), cluster) == 2   # 8 GPUs, 2 slots


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
