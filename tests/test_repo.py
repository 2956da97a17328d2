"""The repository's promises to a new user: README's two commands, CI running the same tests,
and pins that agree between pyproject.toml and constraints.txt."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_opens_with_install_run_and_install_test():
    run, test = _readme_commands()[:2]
    assert "pip install" in run and "jobs/build_dataset.py" in run and "jobs/train.py" in run
    assert "pip install" in test and ".[test]" in test and test.rstrip().endswith("pytest -q -n 2 --dist loadfile")


def test_ci_installs_from_scratch_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test = _readme_commands()[1]
    install = re.search(r"pip install [^&]*", test).group(0).strip()
    assert "python3 -m venv" in ci
    assert install in ci
    assert ci.rstrip().splitlines()[-1].strip() == test.split("&&")[-1].strip()


def test_constraints_agree_with_pyproject_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, ver = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name.lower())] = ver.strip()
    wanted = deps["dependencies"] + deps["optional-dependencies"]["test"]
    for req in wanted:
        name, ver = re.match(r"([A-Za-z0-9_.-]+)(?:\[.*\])?==(.+)", req).groups()
        assert pins.get(re.sub(r"[-_.]+", "-", name.lower())) == ver, req
    assert pins["torch"] == "2.13.0"
