"""Content-keyed stage caches for labelling, per slide, at a storage URL.

Stages and keys (each key hashes its inputs, so a changed input can never hit a stale entry):
  graph   <- expression fingerprint, n_pcs, n_neighbors, seed     (normalise, PCA, kNN, connectivities)
  leiden  <- graph key, resolution, seed                           (clusters)
  degs    <- leiden key                                            (Wilcoxon z-scores and per-cluster
                                                                    expression moments, clusters x genes)
Voting needs only the DEGs, so a relabel that changes the method, N, M, tau_vote, z_min, alpha,
tau_cancer, rank weighting or the hierarchy reads one small file. Entries are ``.npz`` files read with
``allow_pickle=False``, written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import scipy.sparse as sp

from stx_platform import storage

#: Bump when a stage's computation changes, so old entries stop matching.
CACHE_VERSION = 1


def fingerprint(X: sp.spmatrix, obs_names, var_names) -> str:
    """Hash of a count matrix's content and its cell and gene names."""
    X = sp.csr_matrix(X)
    h = hashlib.sha256()
    for arr in (X.indptr, X.indices, X.data):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\x1f".join(map(str, obs_names)).encode())
    h.update("\x1e".join(map(str, var_names)).encode())
    h.update(str(X.shape).encode())
    return h.hexdigest()[:20]


def stage_key(*parts) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageCache:
    """Get/put arrays of one slide's stages at ``url``; with ``url=None`` entries live in this
    object only (several label configs compared in one process still share the stages)."""

    def __init__(self, url: str | None, sample_id: str):
        self.url = url
        self.sample_id = sample_id
        self.hits: dict[str, bool] = {}
        self._memory: dict[str, dict[str, np.ndarray]] = {}

    def _path(self, stage: str, key: str) -> str:
        return storage.join(self.url, self.sample_id, f"{stage}-{key}.npz")

    def get(self, stage: str, key: str) -> dict[str, np.ndarray] | None:
        if self.url is None:
            out = self._memory.get(f"{stage}-{key}")
            self.hits[stage] = out is not None
            return out
        path = self._path(stage, key)
        if not storage.exists(path):
            self.hits[stage] = False
            return None
        with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        self.hits[stage] = True
        return out

    def put(self, stage: str, key: str, **arrays: np.ndarray) -> None:
        if self.url is None:
            self._memory[f"{stage}-{key}"] = dict(arrays)
            return
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        storage.write_bytes(self._path(stage, key), buf.getvalue())
