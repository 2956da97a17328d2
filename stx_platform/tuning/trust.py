"""Resume only sweep state this machine wrote.

Ray Tune restores a sweep by unpickling its experiment state (``tuner.pkl``, the searcher's and
the trials' pickles), and unpickling runs whatever code the file names. Anyone who can write to
a shared sweep folder could otherwise run code on the next ``stx tune --resume``. So when a sweep
stops, the SHA-256 of every state file Tune would read is recorded in a ledger outside the
storage (``$STX_TRUST_DIR``, else ``~/.cache/stx/trusted-sweeps``); a resume first checks that
the files are exactly those. State from elsewhere (another machine, a copy, a changed file) is
refused unless the user says the storage is theirs alone (``--trust-storage``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from stx_platform import storage

#: Names of the files under a sweep's Tune folder that a restore unpickles (or that carry
#: pickled objects: Tune's experiment-state JSON holds cloudpickled trials).
STATE_SUFFIXES = (".pkl", ".pickle")
STATE_PREFIXES = ("experiment_state", "searcher-state", "basic-variant-state")


class UntrustedSweepState(PermissionError):
    """A sweep's saved state was not written by this machine, or has changed since."""


def ledger_dir() -> Path:
    return Path(os.environ.get("STX_TRUST_DIR") or Path.home() / ".cache" / "stx" / "trusted-sweeps")


def _ledger(tune_dir: str) -> Path:
    return ledger_dir() / (hashlib.sha256(tune_dir.encode()).hexdigest()[:32] + ".json")


def _is_state(name: str) -> bool:
    return name.endswith(STATE_SUFFIXES) or name.startswith(STATE_PREFIXES)


def state_digests(tune_dir: str) -> dict[str, str]:
    """Relative path -> SHA-256 of every state file under ``tune_dir`` (any depth)."""
    fs, root = storage.filesystem(tune_dir)
    fs.invalidate_cache(root)
    out = {}
    for path in fs.find(root):
        rel = path[len(root.rstrip("/")) + 1:]
        if _is_state(rel.rsplit("/", 1)[-1]):
            with fs.open(path, "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def record(tune_dir: str) -> None:
    """Remember the state files as this machine left them (called when a sweep stops)."""
    storage.write_json(str(_ledger(tune_dir)), {"tune_dir": tune_dir, "files": state_digests(tune_dir)})


def check(tune_dir: str, trust_storage: bool = False) -> None:
    """Raise :class:`UntrustedSweepState` unless the state files are the ones :func:`record`
    saw, or ``trust_storage``."""
    if trust_storage:
        return
    path = _ledger(tune_dir)
    hint = ("resuming unpickles it, which runs code; if only you can write to this storage, resume with "
            "--trust-storage")
    if not path.exists():
        raise UntrustedSweepState(f"{tune_dir}: this machine has no record of writing this sweep's state "
                                  f"(ledger {ledger_dir()}); {hint}")
    known = storage.read_json(str(path))["files"]
    now = state_digests(tune_dir)
    changed = sorted(k for k in set(known) | set(now) if known.get(k) != now.get(k))
    if changed:
        raise UntrustedSweepState(f"{tune_dir}: {len(changed)} state file(s) changed since this machine wrote "
                                  f"them ({', '.join(changed[:5])}); {hint}")
