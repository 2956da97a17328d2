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


def test_a_killed_writers_staging_files_are_removed_by_the_next_run(tmp_path):
    """A process killed inside ``staged_output`` leaves its file; the next run removes those of
    dead writers and keeps live writers' and recent ones from other hosts (shared filesystems)."""
    import os
    import time

    folder = tmp_path / "ds" / "patches"
    folder.mkdir(parents=True)
    code = ("import sys, os; from stx_platform import storage\n"
            f"with storage.staged_output({str(folder / 's1.parquet')!r}) as t:\n"
            "    open(t, 'wb').write(b'x' * 1000); os._exit(9)")   # dies mid-write
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    [dead] = list(folder.iterdir())
    assert dead.name.startswith(".s1.parquet.") and dead.name.endswith(".tmp.parquet")
    with storage.staged_output(str(folder / "s2.parquet")) as live:   # this process: still writing
        open(live, "wb").write(b"y")
        old = folder / ".s3.parquet.otherhost-12-0123abcd.tmp.parquet"
        recent = folder / ".s4.parquet.otherhost-13-0123abcd.tmp.parquet"
        old.write_bytes(b"z")
        recent.write_bytes(b"z")
        os.utime(old, (time.time() - 2 * 86400,) * 2)
        (folder / "s0.parquet").write_bytes(b"done")                  # a finished shard
        removed = storage.remove_stale_staging(str(tmp_path / "ds"))
        assert sorted(removed) == sorted([str(dead), str(old)])
        assert sorted(p.name for p in folder.iterdir()) == sorted([os.path.basename(live), recent.name, "s0.parquet"])
    assert (folder / "s2.parquet").read_bytes() == b"y"


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
