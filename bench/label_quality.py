"""Label quality: every label method against ground truth on data sets the method was not written
for, with the embedded markers and with the real databases, as macro F1 on all scored cells, the
macro F1 on the cells a method labels, and the share it leaves Unknown.

Data sets (each cell's truth is a coarse class; truth Unknown is left out of the scores):
  synth        the embedded default: `stx synth`'s 4 slides (breast, bowel, lung, kidney)
  heldout-300  tests/heldout_expression.py, a generator written apart from stx synth: breast, colon
               and lung sections of 6,000 cells on a ~300-gene panel (tumour-, immune-, normal-rich)
  heldout-20   the same biology on 20-gene panels (breast, colon, lung)
  heldout-5k   the same on a 5,000-gene panel (breast; filler genes from the databases when present)
  pbmc68k      scanpy's bundled PBMC 68k subset (700 immune cells; CD34+ progenitors Unknown)

    python bench/label_quality.py                          # all, both marker sources -> docs/labels.md
    python bench/label_quality.py --data heldout-20 --markers embedded --methods Paper Ours
    python bench/label_quality.py --relabel-time           # threshold-only relabels from the stage cache
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
MARKERS = ROOT.parent / "shared" / "data" / "markers"

from stx_platform.labels.compare import compare  # noqa: E402
from stx_platform.labels.config import LabelConfig, MarkerSources  # noqa: E402
from stx_platform.labels.markers import load_markers  # noqa: E402

DATASETS = ("synth", "heldout-300", "heldout-20", "heldout-5k", "pbmc68k")
BASELINES = ("TopDown", "UCell", "AUCell", "CellAssign")


def label_methods() -> dict[str, dict]:
    """Method rows: name -> LabelConfig overrides (Table 3's label rows: the paper's rules, the
    improved method's ablations, the default)."""
    from stx_platform.labels.compare import LABEL_ROWS

    return dict(LABEL_ROWS)


def _sample(adata, organ, sid):
    gt = pd.DataFrame({"class": adata.obs["truth"].astype(str)}, index=adata.obs_names.astype(str))
    return SimpleNamespace(expression=adata, organ=organ, sample_id=sid, ground_truth=gt)


def load_dataset(name: str, filler: list[str] | None, workdir: Path) -> list:
    import heldout_expression as H

    if name == "synth":
        from stx_platform.sources import read_sample, sample_refs
        from stx_platform.synth.generate import generate_set, plan

        out = workdir / "synth"
        if not (out / "metadata").exists():
            generate_set(str(out), plan())
        return [read_sample(r) for r in sample_refs(str(out))]
    if name == "pbmc68k":
        return [_sample(H.pbmc68k(), "blood", "pbmc68k")]
    panel = name.split("-")[1]
    if panel == "5k":
        specs = [("breast", "tumour_rich", 1)]
    else:
        specs = [("breast", "tumour_rich", 1), ("colon", "immune_rich", 2), ("lung", "normal_rich", 3),
                 ("breast", "normal_rich", 4)]
    return [_sample(H.make_section(o, panel, 6000, seed, mix, filler), o, f"{o}-{mix}-{panel}")
            for o, mix, seed in specs]


def evaluate(samples, markers: MarkerSources, methods: dict[str, dict], baselines=BASELINES,
             cache_url: str | None = None) -> dict[str, dict]:
    """Scores per method row; ``cache_url``: stage caches shared by the rows (each slide is
    clustered once, every row relabels it from the cached DEGs)."""
    db = load_markers(markers)
    base = LabelConfig(markers=markers)
    out: dict[str, dict] = {}
    if baselines:
        res, _ = compare(samples, base, db, tuple(baselines), cache_url=cache_url, progress=False)
        out.update(res)
    for name, override in methods.items():
        cfg = base.model_copy(update=override)
        res, _ = compare(samples, cfg, db, ("Ours",), cache_url=cache_url, progress=False)
        out[name] = res["Ours"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--markers", nargs="+", default=["embedded", "real"], choices=["embedded", "real"])
    ap.add_argument("--methods", nargs="+", default=None, help="label-method rows (default: all)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "stx-label-quality"))
    ap.add_argument("--out", default=None, help="write the Markdown table, JSON and plot here (e.g. docs/)")
    ap.add_argument("--relabel-time", action="store_true",
                    help="only time a first labelling and threshold-only relabels from the stage cache")
    args = ap.parse_args(argv)
    if args.relabel_time:
        return relabel_time()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    methods = label_methods()
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods}
    sources = {"embedded": MarkerSources()}
    if "real" in args.markers:
        if not MARKERS.exists():
            print(f"skipping the real databases: {MARKERS} not found")
        else:
            sources["real"] = MarkerSources(panglaodb=str(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv"),
                                            cellmarker=str(MARKERS / "Cell_marker_Human.csv.gz"),
                                            cancersea=str(MARKERS / "cancersea"))
    sources = {k: v for k, v in sources.items() if k in args.markers}
    filler = None
    if "real" in sources:
        filler = sorted(load_markers(sources["real"]).genes)
    rows = []
    for d in args.data:
        samples = load_dataset(d, filler, work)
        for mname, ms in sources.items():
            t0 = time.perf_counter()
            res = evaluate(samples, ms, methods, () if args.no_baselines else BASELINES,
                           cache_url=str(work / "cache" / d))
            for m, r in res.items():
                rows.append({"data": d, "markers": mname, "method": m, "macro_f1": r["macro_f1"],
                             "accuracy": r["accuracy"], "labelled_macro_f1": r["labelled_macro_f1"],
                             "unknown": r["predicted_unknown"], "n_cells": r["n_cells"],
                             **{f"f1_{k}": v for k, v in r["f1"].items()}})
            print(f"# {d} / {mname} markers ({time.perf_counter() - t0:.0f} s)")
            sub = pd.DataFrame([r for r in rows if r["data"] == d and r["markers"] == mname])
            print(sub[["method", "macro_f1", "accuracy", "labelled_macro_f1", "unknown"]
                      + [c for c in sub.columns if c.startswith("f1_")]].to_string(index=False,
                                                                                  float_format="%.3f"))
            print(flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "label_quality.json").write_text(json.dumps(rows, indent=1))
        (out / "label_quality.md").write_text(markdown(table))
        _plot(table, out / "label_quality.png")
        print(f"wrote {out}/label_quality.md, label_quality.json and label_quality.png")
    return 0


def relabel_time() -> int:
    """First labelling and three threshold-only relabels (alpha, z_min, N / tau_vote) from the
    stage cache, on held-out breast sections: 100k cells x ~300 genes and 20k cells x 5,000."""
    import heldout_expression as H

    from stx_platform.labels.cache import StageCache
    from stx_platform.labels.markers import default_markers
    from stx_platform.labels.pipeline import label_expression

    db = default_markers()
    for panel, n in (("300", 100_000), ("5k", 20_000)):
        a = H.make_section("breast", panel, n, 5, "tumour_rich")
        cache = StageCache(None, "relabel")
        t = time.perf_counter()
        label_expression(a, "breast", LabelConfig(), db, cache=cache)
        first = time.perf_counter() - t
        times = []
        for over in ({"cancer_alpha": 0.01}, {"min_z": 3.0}, {"top_n": 8, "tau_vote": 4.0}):
            t = time.perf_counter()
            r = label_expression(a, "breast", LabelConfig(**over), db, cache=cache)
            times.append(time.perf_counter() - t)
            assert r.cache_hits.get("degs"), r.cache_hits
        print(f"{n:,} cells x {a.n_vars:,} genes: first labelling {first:.1f} s; relabels from the cache "
              + ", ".join(f"{x:.2f}" for x in times) + " s", flush=True)
    return 0


def markdown(table: pd.DataFrame) -> str:
    """One table per data set: methods as rows; per marker source macro F1 (all scored cells),
    macro F1 on the labelled cells and the share left Unknown."""
    out = []
    for d, g in table.groupby("data", sort=False):
        srcs = list(dict.fromkeys(g["markers"]))
        out += [f"### {d}", "", "| method | " + " | ".join(f"{m}: macro F1 | {m}: F1 labelled | {m}: Unknown"
                                                           for m in srcs) + " |",
                "|---|" + "---|---|---|" * len(srcs)]
        for meth in dict.fromkeys(g["method"]):
            cells = []
            for m in srcs:
                r = g[(g["method"] == meth) & (g["markers"] == m)]
                if len(r):
                    r = r.iloc[0]
                    cells += [f"{r['macro_f1']:.3f}", f"{r['labelled_macro_f1']:.3f}", f"{r['unknown']:.1%}"]
                else:
                    cells += ["", "", ""]
            out.append(f"| {meth} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _plot(table: pd.DataFrame, path: Path) -> None:
    """Macro F1 on labelled cells against the share labelled, one panel per (data, markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(table.groupby(["data", "markers"], sort=False))
    cols = 4
    rows = int(np.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax, ((d, m), g) in zip(axes.ravel(), groups):
        for _, r in g.iterrows():
            main = r["method"] in ("Ours", "Paper") or r["method"] in BASELINES
            ax.scatter(1 - r["unknown"], r["labelled_macro_f1"], s=30 if main else 12,
                       c="crimson" if r["method"] == "Ours" else ("k" if r["method"] == "Paper" else "grey"))
            if main:
                ax.annotate(r["method"], (1 - r["unknown"], r["labelled_macro_f1"]), fontsize=6)
        ax.set_title(f"{d} / {m}", fontsize=8)
        ax.set_xlim(max(0.0, min(0.8, 1 - g["unknown"].max() - 0.05)), 1.01)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("share of cells labelled", fontsize=7)
        ax.set_ylabel("macro F1 on labelled cells", fontsize=7)
    for ax in axes.ravel()[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
