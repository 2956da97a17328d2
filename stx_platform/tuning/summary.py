"""A sweep's summary: the table of trials, the metric against each hyperparameter (a picture),
and the best label config as YAML that ``stx build`` and ``stx train`` accept."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from stx_platform import storage
from stx_platform.build.label_sets import label_config_yaml
from stx_platform.labels.config import LabelConfig

COMPLETED, STOPPED, FAILED, UNFINISHED = "completed", "stopped early", "failed", "unfinished"


def best_trial(rows: list[dict], metric: str) -> dict | None:
    """The trial with the highest final ``metric`` among those that trained every epoch (or,
    when none did, among all that reported it)."""
    scored = [r for r in rows if _finite(r.get(metric))]
    pool = [r for r in scored if r["status"] == COMPLETED] or scored
    return max(pool, key=lambda r: r[metric]) if pool else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def trials_frame(rows: list[dict], params: list[str], metric: str) -> pd.DataFrame:
    cols = ["trial", "status", "epochs", *params, metric, f"best_{metric}", "label_set", "reclustered",
            "labels_s", "train_s", "mlflow_run", "error"]
    return pd.DataFrame(rows, columns=cols).sort_values(metric, ascending=False, na_position="last")


def markdown_table(df: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "/").replace("\n", " ")[:80]
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in df.itertuples(index=False))


def metric_plot(df: pd.DataFrame, params: list[str], metric: str, title: str) -> bytes:
    """One panel per hyperparameter: each trial's final metric against its value (categorical
    values spread a little so equal points stay visible), coloured by how the trial ended."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stx_platform.viz import figure_png

    cols = min(4, max(1, len(params)))
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    colours = {COMPLETED: "#1f77b4", STOPPED: "#ff7f0e", UNFINISHED: "#7f7f7f"}
    ok = df[df[metric].map(_finite)]
    rng = np.random.default_rng(0)
    for ax, p in zip(axes.ravel(), params):
        vals = ok[p].tolist()
        numeric = all(_finite(v) for v in vals)
        if numeric:
            x = np.asarray(vals, float)
        else:
            cats = sorted({str(v) for v in vals})
            x = np.array([cats.index(str(v)) for v in vals], float) + rng.uniform(-0.12, 0.12, len(vals))
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        for status, colour in colours.items():
            m = (ok["status"] == status).to_numpy()
            if m.any():
                ax.scatter(x[m], ok[metric].to_numpy(float)[m], s=28, c=colour, label=status, alpha=0.85)
        ax.set_xlabel(p)
        ax.set_ylabel(f"val {metric}")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(params):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.9, 0.95))
    return figure_png(fig)


def write_summary(folder: str, rows: list[dict], params: list[str], metric: str, title: str) -> dict:
    """``trials.csv``, ``trials.md`` and ``metric_vs_params.png`` under ``folder``; returns their URLs
    and the table (Markdown)."""
    df = trials_frame(rows, params, metric)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    md = markdown_table(df)
    out = {"csv": storage.join(folder, "trials.csv"), "markdown": storage.join(folder, "trials.md"),
           "plot": storage.join(folder, "metric_vs_params.png"), "table": md}
    storage.write_bytes(out["csv"], buf.getvalue().encode())
    storage.write_bytes(out["markdown"], (f"# {title}\n\n" + md).encode())
    storage.write_bytes(out["plot"], metric_plot(df, params, metric, title))
    return out


def best_yaml(base: dict, row: dict, params: list[str], metric: str, sweep: str) -> str:
    """The best trial's label config (the sweep's base config with its sampled values)."""
    config = LabelConfig.model_validate({**base, **{p: row[p] for p in params}})
    header = (f"Best label config of sweep {sweep}: val {metric} {row[metric]:.4f} after {row['epochs']} epoch(s) "
              f"(trial {row['trial']}, label set {row['label_set']}).\n"
              "The swept dataset already holds this label set: stx train --config THIS.yaml --dataset DATASET\n"
              "Another dataset: stx build --config THIS.yaml --out DATASET first (patches are never re-cut).")
    return label_config_yaml(config, header)
