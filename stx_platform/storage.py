"""fsspec URL helpers: one code path for a local folder, ``file://`` and ``s3://``.

Credentials and endpoints come from the usual places (``AWS_*`` environment variables,
``~/.aws``, or fsspec's ``FSSPEC_S3_*`` variables); nothing here logs them.
Writes are staged in a local temporary file and committed whole (``os.replace`` locally,
a single PUT on object stores), so a crash never leaves a partial file under the final name.
A killed process can leave its local staging file (named after its host and pid) beside the
target; :func:`remove_stale_staging` clears those of dead writers.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path within it)`` for a URL or plain path."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def arrow_filesystem(urls: str | list[str]):
    """``(paths, pyarrow filesystem or None)`` for pyarrow/Ray (``read_parquet``, Ray Train
    ``storage_path``): plain absolute paths and None locally, else paths inside a pyarrow
    ``PyFileSystem`` over the fsspec filesystem of the first URL (s3:// with its endpoint and
    credentials from the environment, as everywhere else)."""
    single = isinstance(urls, str)
    items = [urls] if single else list(urls)
    if all(is_local(u) for u in items):
        paths = [os.path.abspath(filesystem(u)[1]) for u in items]
        fs = None
    else:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        paths = [filesystem(u)[1] for u in items]
        fs = PyFileSystem(FSSpecHandler(filesystem(items[0])[0]))
    return (paths[0] if single else paths), fs


def absolute(url: str) -> str:
    """A local path made absolute (Ray workers run in other working directories); URLs unchanged."""
    url = str(url)
    if "://" in url and not url.startswith("file://"):
        return url
    return os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)


def is_local(url: str) -> bool:
    return isinstance(filesystem(url)[0], LocalFileSystem)


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL, keeping its protocol (``s3://b/k`` + ``x`` -> ``s3://b/k/x``)."""
    url = str(url)
    out = url.rstrip("/") if len(url) > 1 else url
    for p in parts:
        out = posixpath.join(out, str(p).lstrip("/")) if out else str(p)
    return out


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem):
        fs.invalidate_cache(posixpath.dirname(path))
    return fs.exists(path)


def is_dir(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.isdir(path)


def listdir(url: str) -> list[str]:
    """Base names in a folder, sorted; empty when the folder does not exist."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)  # object stores cache listings; files may have been written since
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def open_file(url: str, mode: str = "rb", **kwargs: Any):
    fs, path = filesystem(url)
    return fs.open(path, mode, **kwargs)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url).decode("utf-8"))


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def remove(url: str) -> None:
    """Delete a file; nothing when it does not exist."""
    fs, path = filesystem(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(path, exist_ok=True)


_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
_STAGED = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[0-9a-f]{8}\.tmp[^/]*$")


def _pid_alive(pid: int) -> bool:
    """Whether a process of that id exists (one of another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_staging(url: str, other_hosts_after_s: float = 24 * 3600) -> list[str]:
    """Remove the staging files that killed writers left in the local folder ``url`` and its
    subfolders: those of dead processes on this host, and those of other hosts (a shared
    filesystem) older than ``other_hosts_after_s``. Object stores stage off-store: nothing to do.
    Returns the paths removed."""
    fs, path = filesystem(url)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(path):
        return []
    removed = []
    now = time.time()
    for folder, _, files in os.walk(path):
        for name in files:
            m = _STAGED.match(name)
            if not m:
                continue
            full = os.path.join(folder, name)
            if m["host"] == _HOST:
                stale = not _pid_alive(int(m["pid"]))
            else:
                stale = now - os.path.getmtime(full) > other_hosts_after_s
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(full)
                removed.append(full)
    return removed


@contextlib.contextmanager
def staged_output(url: str, suffix: str = "") -> Iterator[str]:
    """Yield a local path to write; on success it becomes ``url`` in one step.

    On an exception nothing appears at ``url`` and the temporary file is removed.
    """
    fs, path = filesystem(url)
    suffix = suffix or os.path.splitext(path)[1]
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    tmpdir = tempfile.mkdtemp(prefix="stx-stage-")
    tmp = os.path.join(tmpdir, "part" + suffix)
    try:
        yield tmp
        fs.put_file(tmp, path)
        fs.invalidate_cache(posixpath.dirname(path))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_bytes(url: str, data: bytes) -> None:
    with staged_output(url) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


@contextlib.contextmanager
def local_copy(url: str) -> Iterator[str]:
    """A local path holding ``url``'s bytes: the file itself when local, else a temporary download.

    For libraries that only take paths (and for formats read whole anyway).
    """
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        yield path
        return
    tmpdir = tempfile.mkdtemp(prefix="stx-get-")
    tmp = os.path.join(tmpdir, posixpath.basename(path))
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
