"""URL helpers and the stx command."""

import subprocess
import sys

import pytest

from stx_platform import storage
from stx_platform.cli import main


def test_join_keeps_protocols():
    assert storage.join("s3://b/k", "x", "y.txt") == "s3://b/k/x/y.txt"
    assert storage.join("/tmp/a/", "b") == "/tmp/a/b"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"


def test_staged_output_is_atomic_locally(tmp_path):
    target = tmp_path / "out" / "f.json"
    with pytest.raises(ZeroDivisionError):
        with storage.staged_output(str(target)) as tmp:
            open(tmp, "w").write("half")
            1 / 0
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []
    storage.write_json(str(target), {"a": 1})
    assert storage.read_json(f"file://{target}") == {"a": 1}


def test_cli_synth_inspect_list(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["synth", "--out", str(out), "--slides", "1", "--cells", "300", "--organs", "prostate",
                 "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "SYN00000" in text and "prostate" in text and "wrote 1 slide(s)" in text
    assert main(["list", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"{out}#SYN00000"
    assert main(["inspect", f"{out}#SYN00000"]) == 0
    assert "ground truth classes" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["inspect", f"{tmp_path}#NOPE"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sample NOPE: metadata/NOPE.json: file not found") and "Traceback" not in err
    assert main(["synth", "--out", str(tmp_path), "--organs", "spleen"]) == 2
    assert "unknown organ 'spleen'" in capsys.readouterr().err


def test_stx_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "stx_platform.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("stx-platform ")
