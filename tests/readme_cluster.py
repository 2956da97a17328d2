"""README's "Scaling out" commands that edit cluster.yaml, for the cluster, image and IAM tests: the
sed that fills in the EDIT placeholders (cluster.yaml and deploy/iam), the sed that switches to
the baked node image, a copy of those files with them run, and Ray's own checks of the result."""

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scaling_out() -> str:
    """README's "Scaling out" section, its subsections included."""
    return (ROOT / "README.md").read_text().split("## Scaling out")[1].split("\n## ")[0]


def _sed(marker: str) -> str:
    found = [ln for ln in re.findall(r"^sed -i '[^']+' .*$", scaling_out(), re.M) if "cluster.yaml" in ln and marker in ln]
    assert len(found) == 1, f"README.md should give one sed command on cluster.yaml with {marker!r}, not {found}"
    return found[0]


def readme_edit() -> str:
    """The README's command that fills in the EDIT placeholders."""
    return _sed("YOUR-")


def readme_image_switch() -> str:
    """The README's command that puts the baked image in place of Ray's."""
    return _sed("rayproject/ray:")


def edited_copy(work: Path, *more: str) -> Path:
    """cluster.yaml and deploy/iam copied into ``work``, README's edit (then ``more``) run there."""
    shutil.copy(ROOT / "cluster.yaml", work / "cluster.yaml")
    shutil.copytree(ROOT / "deploy" / "iam", work / "deploy" / "iam")
    for cmd in (readme_edit(), *more):
        subprocess.run(cmd, shell=True, cwd=work, check=True)
    return work


def validate_for_ray(config: dict) -> dict:
    """Ray's cluster-config schema, then the preparation `ray up` runs before validating; returns
    the prepared config."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared
