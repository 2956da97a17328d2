"""The cluster's IAM: the workers' least-privilege policy (S3 on the project's bucket and prefix,
nothing else), the instance profile README's commands create being the one cluster.yaml's
workers name, the head's permission to pass that role, the baked image's ECR pull policy, and
what Ray's launcher does with these profiles (its own code, against moto's IAM)."""

import copy
import fnmatch
import json
import os
import re

import pytest
import yaml
from readme_cluster import ROOT, edited_copy, readme_edit, scaling_out

IAM = ROOT / "deploy" / "iam"


def statements(path) -> list[dict]:
    doc = json.loads(path.read_text())
    assert doc["Version"] == "2012-10-17"
    out = doc["Statement"]
    for st in out:
        assert st["Effect"] == "Allow" and not {"NotAction", "NotResource", "Principal"} & set(st), st
        st["Action"] = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        if "Resource" in st:
            st["Resource"] = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
    return out


def allows(sts: list[dict], action: str) -> list[dict]:
    """The statements whose Action patterns match ``action`` (IAM matches case-insensitively)."""
    return [st for st in sts if st["Effect"] == "Allow"
            and any(fnmatch.fnmatch(action.lower(), a.lower()) for a in st["Action"])]


def aws_iam(verb: str) -> list[dict[str, str]]:
    """README's `aws iam VERB --opt value ...` commands, as {opt: value}."""
    found = re.findall(rf"aws iam {verb} ((?:--[\w-]+ \S+ ?)+)", scaling_out())
    return [dict(re.findall(r"--([\w-]+) ([^\s;]+)", args)) for args in found]


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """(cluster.yaml, the deploy/iam folder) after README's edit, on a copy."""
    work = edited_copy(tmp_path_factory.mktemp("iam"))
    return yaml.safe_load((work / "cluster.yaml").read_text()), work / "deploy" / "iam"


def readme_values() -> tuple[str, str]:
    """(bucket, account id) README's edit fills in."""
    edit = readme_edit()
    return re.search(r"s/YOUR-BUCKET/([\w.-]+)/", edit).group(1), re.search(r"s/YOUR-ACCOUNT-ID/(\d{12})/", edit).group(1)


def test_worker_policy_is_s3_on_the_projects_prefix_only():
    sts = statements(IAM / "stx-worker-policy.json")
    bucket_arn = "arn:aws:s3:::YOUR-BUCKET"
    # the prefix the jobs write under: README's $DATA, in the bucket README's edit names
    data = re.search(r"DATA=s3://([\w.-]+)/(\S+)", scaling_out())
    assert data.group(1) == readme_values()[0]
    objects_arn = f"{bucket_arn}/{data.group(2).strip('/')}/*"
    for st in sts:
        for a in st["Action"]:
            assert a.startswith("s3:") and "*" not in a, f"{a}: only named S3 actions"
        for r in st["Resource"]:
            assert r in (bucket_arn, objects_arn), f"{r}: only the project's bucket and prefix"
    by_resource = {}
    for st in sts:
        for r in st["Resource"]:
            by_resource.setdefault(r, set()).update(st["Action"])
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= by_resource[objects_arn]
    assert "s3:ListBucket" in by_resource[bucket_arn]
    assert not by_resource[bucket_arn] & {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"}


def test_workers_run_with_the_profile_readme_creates(edited):
    config, iam = edited
    _, account = readme_values()
    [role] = aws_iam("create-role")
    [profile] = aws_iam("create-instance-profile")
    assert aws_iam("add-role-to-instance-profile") == [{"instance-profile-name": profile["instance-profile-name"],
                                                        "role-name": role["role-name"]}]
    worker_policies = [c for c in aws_iam("put-role-policy") if c["role-name"] == role["role-name"]]
    assert [c["policy-document"] for c in worker_policies] == ["file://deploy/iam/stx-worker-policy.json"]
    for opts in aws_iam("create-role") + aws_iam("put-role-policy"):
        for value in opts.values():
            if value.startswith("file://"):
                assert (ROOT / value.removeprefix("file://")).exists(), value
    # the role is EC2's to assume
    trust = json.loads((ROOT / role["assume-role-policy-document"].removeprefix("file://")).read_text())
    assert trust["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                   "Action": "sts:AssumeRole"}]
    # every worker type runs with that profile; the head names none (the launcher's default)
    head_type = config["head_node_type"]
    arn = f"arn:aws:iam::{account}:instance-profile/{profile['instance-profile-name']}"
    for name, t in config["available_node_types"].items():
        if name == head_type:
            assert "IamInstanceProfile" not in t["node_config"]
        else:
            assert t["node_config"]["IamInstanceProfile"] == {"Arn": arn}, name


def test_the_head_may_pass_only_the_workers_role_and_only_to_ec2(edited):
    from ray.autoscaler._private.aws.config import DEFAULT_RAY_IAM_ROLE

    _, iam = edited
    _, account = readme_values()
    [role] = aws_iam("create-role")
    [head] = [c for c in aws_iam("put-role-policy") if c["policy-document"].endswith("stx-head-pass-worker-role.json")]
    assert head["role-name"] == DEFAULT_RAY_IAM_ROLE, "the policy goes on the role Ray's launcher gives the head"
    [st] = statements(iam / "stx-head-pass-worker-role.json")
    assert st["Action"] == ["iam:PassRole"]
    assert st["Resource"] == [f"arn:aws:iam::{account}:role/{role['role-name']}"]
    assert st["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_ecr_pull_policy_reads_only_the_image_repository(edited):
    from ray.autoscaler._private.aws.config import DEFAULT_RAY_IAM_ROLE

    config, iam = edited
    _, account = readme_values()
    region = config["provider"]["region"]
    repo = re.search(r"^export REPO=\S+/([\w.-]+)$", scaling_out(), re.M).group(1)
    sts = statements(iam / "stx-ecr-pull-policy.json")
    for st in sts:
        for a in st["Action"]:
            assert a in ("ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                         "ecr:BatchCheckLayerAvailability"), f"{a}: pulls only"
        if st["Resource"] == ["*"]:   # the registry login token is account-wide, not per repository
            assert st["Action"] == ["ecr:GetAuthorizationToken"]
        else:
            assert st["Resource"] == [f"arn:aws:ecr:{region}:{account}:repository/{repo}"]
    assert allows(sts, "ecr:BatchGetImage") and allows(sts, "ecr:GetAuthorizationToken")
    # both roles pull the image: the head's and the workers'
    [role] = aws_iam("create-role")
    assert f"for role in {role['role-name']} {DEFAULT_RAY_IAM_ROLE}; do aws iam put-role-policy --role-name $role " \
           f"--policy-name stx-ecr-pull --policy-document file://deploy/iam/stx-ecr-pull-policy.json; done" in scaling_out()


@pytest.fixture
def moto_iam(s3_server, monkeypatch):
    """The suite's moto server (it answers every AWS service on one port) as AWS's IAM for Ray's
    launcher, with AWS's managed policies loaded (conftest). Not moto's in-process mock: leaving it resets
    every moto backend of the process, the S3 server's buckets included."""
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws.utils import client_cache, resource_cache

    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")   # never a real account
    monkeypatch.setattr(aws_config.time, "sleep", lambda s: None)   # the launcher waits 15 s for IAM to propagate
    resource_cache.cache_clear()
    client_cache.cache_clear()
    yield
    resource_cache.cache_clear()
    client_cache.cache_clear()


def test_the_launcher_gives_its_default_profile_to_the_head_only(edited, moto_iam):
    """Ray's own IAM step of `ray up`, on cluster.yaml: it creates its default role and profile,
    applies them to the head alone, and leaves the workers' profile as written. The default role's
    managed policies do not grant iam:PassRole (moto's copies), hence the head's extra policy."""
    import boto3
    from ray.autoscaler._private.aws.config import (
        DEFAULT_RAY_IAM_ROLE,
        DEFAULT_RAY_INSTANCE_PROFILE,
        _configure_iam_role,
    )
    from readme_cluster import validate_for_ray

    config, iam = edited
    prepared = validate_for_ray(config)
    prepared["head_node"] = {}   # as bootstrap_aws sets it up before this step
    workers = {n: copy.deepcopy(t["node_config"]) for n, t in prepared["available_node_types"].items()
               if n != prepared["head_node_type"]}
    out = _configure_iam_role(copy.deepcopy(prepared))
    for name, node_config in workers.items():
        assert out["available_node_types"][name]["node_config"] == node_config, name
    assert "IamInstanceProfile" not in out["available_node_types"][out["head_node_type"]]["node_config"]
    assert out["head_node"]["IamInstanceProfile"]["Arn"].endswith(f":instance-profile/{DEFAULT_RAY_INSTANCE_PROFILE}")

    client = boto3.client("iam", region_name=config["provider"]["region"])
    attached = client.list_attached_role_policies(RoleName=DEFAULT_RAY_IAM_ROLE)["AttachedPolicies"]
    assert {p["PolicyName"] for p in attached} == {"AmazonEC2FullAccess", "AmazonS3FullAccess"}
    for p in attached:
        version = client.get_policy(PolicyArn=p["PolicyArn"])["Policy"]["DefaultVersionId"]
        doc = client.get_policy_version(PolicyArn=p["PolicyArn"], VersionId=version)["PolicyVersion"]["Document"]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        sts = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
        for st in sts:
            st["Action"] = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        assert not allows(sts, "iam:PassRole"), f"{p['PolicyName']} grants iam:PassRole"
    assert allows(statements(iam / "stx-head-pass-worker-role.json"), "iam:PassRole")
