"""pynndescent's kNN graph (what scanpy uses), with its numba kernels cached on the node's disk.

pynndescent compiles its numba kernels in every fresh process, as each Ray slide task is: on 20k
x 50 points, ~12 CPU s at import and ~19 s more on the first graph (one thread, this machine).
Most of its kernels are declared ``cache=False``; importing it with ``numba.njit`` forced to
``cache=True`` and numba's cache directory pointed at a node-local folder lets the next process
load them from disk: measured 1.7 + 11 CPU s instead of 12 + 19 on the same points. What stays
is the driver and the kernels that take the distance function as an argument (numba keys those
per process, so they compile again each time). The graph is pynndescent's own, unchanged.

Cache folder: ``$STX_NUMBA_CACHE_DIR`` (empty: no cache), else ``~/.cache/stx/numba``, else the
temp dir; one subfolder per numba, pynndescent and Python version (a cached kernel embeds the
pynndescent code it was compiled from). Unwritable everywhere: nothing is cached, everything
compiles as plain pynndescent does. numba's global settings are only changed during the import;
if pynndescent was imported before (by scanpy, say), it stays as it was.

pynndescent's kernels call ``print`` (when verbose), and numba compiles them only against the
``print`` it saw when it was imported. Ray puts a Python function in ``builtins.print`` in a
driver that has shown a Ray progress bar (``ray.experimental.tqdm_ray``) and in Ray Train's
workers, after which a first graph in that process failed to compile ("Untyped global name
'print'"); the graph is built with numba's ``print`` put back meanwhile (:func:`numba_print`).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import tempfile
import warnings

import numpy as np


def cache_dir() -> str | None:
    """The first writable cache folder (see the module's docstring), or None."""
    from importlib.metadata import version

    env = os.environ.get("STX_NUMBA_CACHE_DIR")
    roots = [env] if env is not None else [os.path.join(os.path.expanduser("~"), ".cache", "stx", "numba"),
                                           os.path.join(tempfile.gettempdir(), f"stx-numba-{os.getuid()}")]
    tag = f"numba{version('numba')}-pynndescent{version('pynndescent')}-py{sys.version_info[0]}{sys.version_info[1]}"
    for root in roots:
        if not root:
            continue
        path = os.path.join(root, tag)
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
            return path
        except OSError:
            continue
    return None


@contextlib.contextmanager
def _numba_cached_in(path: str | None):
    """While inside: every ``numba.njit`` function declared caches in ``path`` (no-op if None)."""
    import numba
    from numba.core import config

    if path is None:
        yield
        return
    njit, old_dir = numba.njit, config.CACHE_DIR

    def cached_njit(*args, **kwargs):
        kwargs["cache"] = True
        return njit(*args, **kwargs)

    numba.njit, config.CACHE_DIR = cached_njit, path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)  # "cannot cache": compiled as before
            yield
    finally:
        numba.njit, config.CACHE_DIR = njit, old_dir


def import_nndescent():
    """pynndescent's ``NNDescent``, the module imported under the node's numba cache when this
    process has not imported it yet."""
    if "pynndescent" not in sys.modules:
        with _numba_cached_in(cache_dir()), numba_print():   # probed once: only before the first import
            import pynndescent  # noqa: F401
    from pynndescent import NNDescent

    return NNDescent


@contextlib.contextmanager
def numba_print():
    """While inside, ``builtins.print`` is the object numba took for ``print`` when it was
    imported: numba compiles a call to print only against that one. Ray replaces builtins.print
    with a Python function in a driver that has shown a Ray progress bar (tqdm_ray) and in Ray
    Train's workers, before or after numba's import."""
    import numba.core.typing.builtins as typing_builtins
    from numba.core import types as nb_types
    from numba.core.typing.templates import builtin_registry

    known = next((v for v, t in builtin_registry.globals if isinstance(t, nb_types.Function)
                  and any(issubclass(x, typing_builtins.Print) for x in t.templates)), None)
    current = builtins.print
    if known is None or known is current:
        yield
        return
    builtins.print = known
    try:
        yield
    finally:
        builtins.print = current


def neighbor_graph(data: np.ndarray, n_neighbors: int, seed: int, n_trees: int, n_iters: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``NNDescent(data, n_neighbors, euclidean, random_state=seed, low_memory=True, n_trees,
    n_iters).neighbor_graph``: (indices, distances), self first, with pynndescent imported under
    the node's numba cache."""
    NNDescent = import_nndescent()

    with warnings.catch_warnings(), numba_print():
        warnings.simplefilter("ignore")   # numba's "cannot cache" notes for the per-process kernels
        index = NNDescent(data, n_neighbors=n_neighbors, metric="euclidean", random_state=seed, low_memory=True,
                          n_trees=n_trees, n_iters=n_iters)
        return index.neighbor_graph
