"""The node image (Dockerfile): its base is the Ray and Python of constraints.txt and of
cluster.yaml's images; it installs the project from the pins in a layer after the dependencies';
its smoke check passes here and names what is wrong; cluster.yaml's setup commands skip pip only
on an image built from the checkout's pins; README's switch to the image gives a config Ray
accepts. Building the image needs a Docker daemon, which this machine lacks:
`python deploy/image/build_check.py` builds and checks it where one runs."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from readme_cluster import ROOT, edited_copy, readme_edit, readme_image_switch, scaling_out, validate_for_ray

FLAVORS = ("cpu", "gpu")
SMOKE = ROOT / "deploy" / "image" / "smoke.py"


def _smoke_module():
    spec = importlib.util.spec_from_file_location("stx_image_smoke", SMOKE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, cur = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        word, _, rest = (cur + line).partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def base_images() -> dict[str, str]:
    """flavor -> the base image the Dockerfile builds on."""
    ins = instructions()
    [frm] = [a for i, a in ins if i == "FROM"]
    default = [a for i, a in ins[:ins.index(("FROM", frm))] if i == "ARG" and a.startswith("FLAVOR=")]
    assert default == ["FLAVOR=cpu"], "the image's default flavor is the CPU one"
    return {f: frm.replace("${FLAVOR}", f) for f in FLAVORS}


def copy_sources(args: str) -> list[str]:
    return [w for w in args.split()[:-1] if not w.startswith("--")]


@pytest.fixture(scope="module")
def raw_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_base_image_is_the_ray_and_python_of_the_pins_and_of_cluster_yaml(raw_config):
    from packaging.specifiers import SpecifierSet

    ray_pin = _smoke_module().pins(ROOT / "constraints.txt")["ray"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"ray[data,train,tune,default]=={ray_pin}" in project["dependencies"]
    images = base_images()
    for flavor, image in images.items():
        m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(\w+)", image)
        assert m, image
        assert m.group(1) == ray_pin, f"{image}: Ray {m.group(1)}, constraints.txt pins {ray_pin}"
        python = f"{m.group(2)}.{m.group(3)}"
        assert python == "3.11", f"{image}: the pins are resolved and tested on Python 3.11"
        assert SpecifierSet(project["requires-python"]).contains(f"{python}.0")
        assert m.group(4) == flavor
    # cluster.yaml runs the same images (Ray's, or the baked ones built on them)
    docker = raw_config["docker"]
    assert docker["head_image"] == docker["worker_image"] == images["cpu"]
    gpu = [t for t in raw_config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu and all(t["docker"]["worker_image"] == images["gpu"] for t in gpu)
    for t in raw_config["available_node_types"].values():
        assert t.get("docker", {}).get("worker_image", images["cpu"]) in images.values()


def test_dockerfile_installs_the_project_from_the_pins_after_its_dependencies():
    ins = instructions()
    pips = [k for k, (i, a) in enumerate(ins) if i == "RUN" and "pip install" in a]
    assert len(pips) == 2, "one pip install for the dependencies, one for the project"
    for k in pips:
        args = ins[k][1]
        assert re.search(r"-c \$STX_IMAGE_PINS/constraints\.txt ", args), args
        assert not re.search(r"(^|\s)(-e|--editable)(\s|=)", args), "the image must not depend on a mounted checkout"
    deps, project = pips
    copies = [(k, copy_sources(a), a.split()[-1]) for k, (i, a) in enumerate(ins) if i == "COPY"]
    # the dependencies' layer sees only the pins, so a code change does not rebuild it
    assert [srcs for k, srcs, _ in copies if k < deps] == [["constraints.txt", "pyproject.toml"]]
    assert [dst for k, _, dst in copies if k < deps] == ["$STX_IMAGE_PINS/"]
    assert "-r " in ins[deps][1] and "stx-src" not in ins[deps][1]
    # the source comes after, and is installed as a package (not left importable from a folder)
    [(k_src, src_dst)] = [(k, dst) for k, srcs, dst in copies if "stx_platform" in srcs]
    assert deps < k_src < project
    src_root = src_dst.rstrip("/").rsplit("/", 1)[0]
    assert re.search(rf"pip install .* {re.escape(src_root)}( |$)", ins[project][1]), ins[project][1]
    assert f"rm -rf {src_root}" in ins[project][1]
    # then the smoke check, on this flavor
    smoke = [k for k, (i, a) in enumerate(ins) if i == "RUN" and "smoke.py" in a]
    assert smoke and smoke[-1] > project and '"$FLAVOR"' in ins[smoke[-1]][1]
    # every file the Dockerfile copies is let into the build context by .dockerignore
    kept = {ln.strip()[1:] for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip().startswith("!")}
    for _, srcs, _ in copies:
        for src in srcs:
            assert src in kept, f".dockerignore keeps {src} out of the build context"
            assert (ROOT / src).exists()


def test_smoke_check_passes_here_and_names_what_is_wrong(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "STX_IMAGE_PINS"}
    r = subprocess.run([sys.executable, str(SMOKE), "cpu"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok (cpu)"), r.stdout + r.stderr
    # a pin this environment does not have, and the GPU flavor on the CPU build of torch
    numpy = _smoke_module().pins(ROOT / "constraints.txt")["numpy"]
    (tmp_path / "constraints.txt").write_text((ROOT / "constraints.txt").read_text().replace(
        f"numpy=={numpy}\n", "numpy==1.0.0\n"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    r = subprocess.run([sys.executable, str(SMOKE), "gpu", "--pins", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"numpy: {numpy} installed, 1.0.0 pinned" in r.stdout
    assert "the gpu image needs a CUDA build" in r.stdout


def _setup(cmd: str, home: Path, pins: Path | None) -> list[str]:
    """Run a cluster.yaml setup command with HOME=home and a pip that only records its arguments."""
    fake = home / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "pip").write_text('#!/bin/sh\necho "$@" >> "$PIP_LOG"\n')
    (fake / "pip").chmod(0o755)
    log = home / "pip.log"
    log.unlink(missing_ok=True)
    env = {"HOME": str(home), "PATH": f"{fake}:/usr/bin:/bin", "PIP_LOG": str(log)}
    if pins:
        env["STX_IMAGE_PINS"] = str(pins)
    r = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_setup_commands_skip_pip_only_on_an_image_with_the_checkouts_pins(raw_config, tmp_path):
    cpu = raw_config["setup_commands"]
    [gpu] = [t["worker_setup_commands"] for t in raw_config["available_node_types"].values() if t["resources"].get("GPU")]
    assert len(cpu) == len(gpu) == 1
    home = tmp_path / "home"
    checkout = home / "stx-platform"                   # cluster.yaml's file_mounts target
    checkout.mkdir(parents=True)
    same, newer = tmp_path / "same", tmp_path / "newer"
    for d in (checkout, same, newer):
        d.mkdir(exist_ok=True)
        for name in ("constraints.txt", "pyproject.toml"):
            shutil.copy(ROOT / name, d)
    with open(newer / "constraints.txt", "a") as f:   # an image built before a change of pins
        f.write("extra-package==1.0\n")
    for cmd, index in ((cpu[0], True), (gpu[0], False)):
        ray_image = _setup(cmd, home, None)            # Ray's own image: no pins, the install runs
        assert len(ray_image) == 1 and "-e" in ray_image[0] and "constraints.txt" in ray_image[0]
        assert ("download.pytorch.org/whl/cpu" in ray_image[0]) is index
        assert _setup(cmd, home, same) == [], "the baked image with the checkout's pins needs no pip install"
        assert _setup(cmd, home, newer) == ray_image, "a stale image falls back to the pip install"
        (same / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + "\n# changed\n")
        assert _setup(cmd, home, same) == ray_image
        shutil.copy(ROOT / "pyproject.toml", same)


def _without_images(config: dict) -> dict:
    types = {n: {k: v for k, v in t.items() if k != "docker"} for n, t in config["available_node_types"].items()}
    return {**{k: v for k, v in config.items() if k != "docker"}, "available_node_types": types}


def test_readme_switch_to_the_baked_image_gives_a_valid_config(tmp_path):
    (tmp_path / "baked").mkdir()
    (tmp_path / "plain").mkdir()
    config = yaml.safe_load((edited_copy(tmp_path / "baked", readme_image_switch()) / "cluster.yaml").read_text())
    plain = yaml.safe_load((edited_copy(tmp_path / "plain") / "cluster.yaml").read_text())
    validate_for_ray(config)
    account = re.search(r"s/YOUR-ACCOUNT-ID/(\d{12})/", readme_edit()).group(1)
    region = config["provider"]["region"]
    # README builds and pushes one tag per flavor, named as the base image's tag
    section = scaling_out()
    repo = re.search(r"^export REPO=(\S+)$", section, re.M).group(1)
    assert repo == f"{account}.dkr.ecr.{region}.amazonaws.com/stx-platform"
    builds = dict((tag, args) for args, tag in re.findall(r"^docker build (.*?)-t \$REPO:(\S+) \. && docker push \$REPO:\2$",
                                                          section, re.M))
    base = base_images()
    assert builds == {base["cpu"].split(":")[1]: "", base["gpu"].split(":")[1]: "--build-arg FLAVOR=gpu "}
    # ...and cluster.yaml runs them: head and CPU workers the CPU one, GPU workers the GPU one
    docker = config["docker"]
    assert docker["head_image"] == docker["worker_image"] == base["cpu"].replace("rayproject/ray", repo)
    for name, t in config["available_node_types"].items():
        if "docker" in t:
            flavor = "gpu" if t["resources"].get("GPU") else "cpu"
            assert t["docker"]["worker_image"] == base[flavor].replace("rayproject/ray", repo), name
    # the nodes' hosts log into that registry before pulling; nothing else changed
    host = repo.split("/")[0]
    assert any(f"docker login --username AWS --password-stdin {host} " in c and f"--region {region} " in c
               for c in config["initialization_commands"])
    assert _without_images(config) == _without_images(plain)
