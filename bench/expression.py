"""Benchmark: cell x gene matrix from decoded transcripts (the HEST reader's hot path).

Writes a Xenium-like transcripts Parquet file (string cell ids as Xenium >= 2.0 writes them,
string feature names incl. negative controls, float qv), then times, from the file:
the reader's path (``pq.read_table`` with dictionary columns + ``cell_by_gene``) against the
obvious pandas recipe (``pd.read_parquet``, filter, ``groupby([cell_id, feature_name]).size()``,
sparse pivot), checking both give the same matrix; ``cell_by_gene`` alone on a table of
plain strings (no dictionary from the file); and the peak memory of reading the file whole
against the readers' row-group streaming (``count_parquet``), each in its own process
(peak RSS, the kernel's VmHWM, above an idle interpreter that imported the same modules).

    python bench/expression.py                    # 20M transcripts, 200k cells
    python bench/expression.py --transcripts 2e6  # quicker
    python bench/expression.py --scaling 5e6,20e6 # peak memory vs transcripts, 3a0d2c6 against now
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from stx_platform.sources.expression import cell_by_gene, count_parquet
from stx_platform.synth.panel import control_features, gene_panel


def make_table(n_tx: int, n_cells: int, seed: int = 0) -> tuple[pa.Table, pd.Index]:
    rng = np.random.default_rng(seed)
    genes = list(gene_panel())
    feats = genes + list(control_features("modern"))
    ids = pd.Index([f"{i:08x}-1" for i in range(n_cells)])
    cell = rng.integers(-1, n_cells, n_tx)  # -1 = unassigned
    feat = np.where(rng.uniform(size=n_tx) < 0.006, rng.integers(len(genes), len(feats), n_tx),
                    rng.integers(0, len(genes), n_tx))
    cell_dict = pa.array(["UNASSIGNED", *ids])
    table = pa.table({
        "cell_id": pa.DictionaryArray.from_arrays(pa.array(cell + 1, pa.int32()), cell_dict).cast(pa.string()),
        "feature_name": pa.DictionaryArray.from_arrays(pa.array(feat, pa.int32()), pa.array(feats)).cast(pa.string()),
        "qv": pa.array(rng.gamma(6, 5, n_tx).astype(np.float32)),
    })
    return table, ids


def pandas_baseline(path: str, ids: pd.Index, genes: list[str]) -> sp.csr_matrix:
    df = pd.read_parquet(path, columns=["cell_id", "feature_name", "qv"])
    df = df[(df["qv"] >= 20) & df["feature_name"].isin(genes) & (df["cell_id"] != "UNASSIGNED")]
    sizes = df.groupby(["cell_id", "feature_name"]).size()
    rows = ids.get_indexer(sizes.index.get_level_values(0))
    cols = pd.Index(genes).get_indexer(sizes.index.get_level_values(1))
    return sp.csr_matrix((sizes.to_numpy(), (rows, cols)), shape=(len(ids), len(genes)))


_CHILD = """
import sys, pandas as pd, pyarrow.parquet as pq
path, n_cells, how, rev, bench = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if rev == "-":
    import stx_platform.sources.expression as ex
else:   # the module as of git revision rev, for a before/after in one run
    sys.path.insert(0, bench)
    from revision import module_at
    ex = module_at(rev, "stx_platform/sources/expression.py")
ids = pd.Index([f"{i:08x}-1" for i in range(n_cells)])
ids.get_indexer(ids[:1])   # the index's hash table belongs to the cell table, not to the counting
cols = ["cell_id", "feature_name", "qv"]
m = None
if how == "whole":
    m, _, _ = ex.cell_by_gene(pq.read_table(path, columns=cols, read_dictionary=["cell_id", "feature_name"]), ids)
elif how == "stream":
    m, _, _ = ex.count_parquet(path, cols, ids)
hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0].split()[1]
size = 0 if m is None else m.data.nbytes + m.indices.nbytes + m.indptr.nbytes
print(0 if m is None else int(m.sum()), int(hwm) * 1024, size)
"""


def peak_rss(path: str, n_cells: int, how: str, rev: str = "-") -> tuple[int, int, int]:
    """(peak RSS in bytes, the matrix total, the matrix's bytes) of a fresh process running one
    path (``rev``: expression.py as of that git revision, "-" for this checkout's): the kernel's
    high-water mark of that process's memory (``VmHWM``, Linux), read by the process itself."""
    r = subprocess.run([sys.executable, "-c", _CHILD, path, str(n_cells), how, rev,
                        os.path.dirname(os.path.abspath(__file__))], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if r.returncode:
        raise SystemExit(f"{how} child failed: {r.stderr[-2000:]}")
    total, peak, size = r.stdout.split()
    return int(peak), int(total), int(size)


def scaling(counts: list[int], n_cells: int, rev: str) -> None:
    """Peak memory of streaming a file at several transcript counts, expression.py as of ``rev``
    against this checkout's, each in a fresh process: above an idle interpreter, and above that
    plus the final matrix (what the counting itself holds; flat when memory does not follow the
    transcripts)."""
    print(f"\n{'transcripts':>12} {'code':>8} {'matrix MB':>10} {'peak MB':>8} {'- matrix':>9} {'B/transcript':>13}")
    with tempfile.TemporaryDirectory(prefix="stx-bench-") as tmp:
        for n_tx in counts:
            path = os.path.join(tmp, "transcripts.parquet")
            pq.write_table(make_table(n_tx, n_cells)[0], path, compression="zstd")
            idle, _, _ = peak_rss(path, n_cells, "idle")
            got = {}
            for name, r in ((rev, rev), ("this", "-")):
                peak, total, size = peak_rss(path, n_cells, "stream", r)
                got[name] = total
                print(f"{n_tx:>12,} {name:>8} {size / 1e6:>10.0f} {(peak - idle) / 1e6:>8.0f} "
                      f"{(peak - idle - size) / 1e6:>9.0f} {(peak - idle) / n_tx:>13.1f}", flush=True)
            if got[rev] != got["this"]:
                raise SystemExit("the two revisions count differently")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transcripts", type=float, default=20e6)
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--scaling", metavar="N1,N2", help="only the peak memory of streaming at these transcript "
                    "counts, expression.py as of --rev against this checkout's")
    ap.add_argument("--rev", default="3a0d2c6", help="the git revision to compare with (--scaling)")
    args = ap.parse_args()
    if args.scaling:
        scaling([int(float(v)) for v in args.scaling.split(",")], args.cells, args.rev)
        return
    n_tx = int(args.transcripts)
    t = time.perf_counter()
    table, ids = make_table(n_tx, args.cells)
    print(f"table: {n_tx:,} transcripts, {args.cells:,} cells, {table.nbytes / 1e9:.2f} GB "
          f"(built in {time.perf_counter() - t:.1f} s)")

    with tempfile.TemporaryDirectory(prefix="stx-bench-") as tmp:
        path = os.path.join(tmp, "transcripts.parquet")
        pq.write_table(table, path, compression="zstd")
        print(f"parquet: {os.path.getsize(path) / 1e6:.0f} MB")

        t = time.perf_counter()
        tx = pq.read_table(path, columns=["cell_id", "feature_name", "qv"], read_dictionary=["cell_id", "feature_name"])
        ours, genes, stats = cell_by_gene(tx, ids)
        t_ours = time.perf_counter() - t
        del tx
        print(f"stx reader path (read + cell_by_gene): {t_ours:6.2f} s  ({n_tx / t_ours / 1e6:.1f} M transcripts/s)")
        print(f"  {stats.as_dict()}")

        t = time.perf_counter()
        streamed, _, _ = count_parquet(path, ["cell_id", "feature_name", "qv"], ids)
        t_stream = time.perf_counter() - t
        print(f"stx reader path, row-group streaming:  {t_stream:6.2f} s  ({t_stream / t_ours:.2f}x the whole-file time)")
        if streamed.sum() != ours.sum():
            raise SystemExit("streaming and whole-file counts differ")

        idle, _, _ = peak_rss(path, args.cells, "idle")
        rss = {how: peak_rss(path, args.cells, how) for how in ("whole", "stream")}
        for how, (peak, total, _) in rss.items():
            print(f"peak memory, {how:>6}: {(peak - idle) / 1e6:7.0f} MB above an idle interpreter "
                  f"({(peak - idle) / n_tx:.1f} bytes per transcript)")
        print(f"  streaming needs {(rss['whole'][0] - idle) / max(rss['stream'][0] - idle, 1):.1f}x less")

        t = time.perf_counter()
        base = pandas_baseline(path, ids, genes)
        t_base = time.perf_counter() - t
        print(f"pandas (read_parquet + groupby):       {t_base:6.2f} s  ({n_tx / t_base / 1e6:.1f} M transcripts/s)")

    t = time.perf_counter()
    plain, _, _ = cell_by_gene(table, ids)
    t_plain = time.perf_counter() - t
    print(f"cell_by_gene on plain strings:         {t_plain:6.2f} s")
    same = (ours != base).nnz == 0 and (plain != base).nnz == 0
    print(f"same matrix: {same}   speed-up over pandas: {t_base / t_ours:.1f}x")
    if not same:
        raise SystemExit("matrices differ")


if __name__ == "__main__":
    main()
