"""What a build holds: nuclei per organ and class (patch instances joined with the label
tables), label composition per slide, and a picture of random patches with every nucleus
outlined in its label's colour (the paper's Fig. 2 in spirit). Written beside the dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from stx_platform import storage
from stx_platform.labels.table import read_label_table
from stx_platform.taxonomy import CLASS_COLOURS, LABEL_CLASSES, UNKNOWN


def outline_instances(img: np.ndarray, inst: np.ndarray, classes: list[str]) -> np.ndarray:
    """``img`` with the border pixels of instance i coloured by ``classes[i-1]``."""
    import cv2

    out = img.copy()
    inst = inst.astype(np.int32)
    eroded = cv2.erode(inst.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
    dilated = cv2.dilate(inst.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
    edge = (inst > 0) & ((eroded != inst) | (dilated != inst))
    lut = np.array([(0, 0, 0)] + [CLASS_COLOURS.get(c, CLASS_COLOURS[UNKNOWN]) for c in classes], np.uint8)
    out[edge] = lut[inst[edge]]
    return out


def _labels(out: str, rec: dict) -> pd.Series:
    cells, _ = read_label_table(storage.join(out, rec["label_table"]))
    return cells["label"]


def _problems(manifest: dict) -> str:
    """Failed slides (with the quality gate or error) and warnings, for the summary."""
    rows = [{"sample": r["sample_id"], "status": r["status"], "gate": r.get("gate") or "",
             "reason": (r.get("error") or "").splitlines()[0] if r["status"] != "done" else "",
             "warnings": "; ".join(r.get("warnings") or [])}
            for r in manifest["slides"] if r["status"] != "done" or r.get("warnings")]
    if not rows:
        return ""
    return "\n## Failed slides and warnings\n\n" + _markdown(pd.DataFrame(rows)) + "\n"


def summarise(out: str, manifest: dict, n_pictures: int = 12, seed: int = 0) -> dict:
    """Tables (CSV + Markdown) and ``patches_by_label.png`` under ``<out>/summary/``."""
    from stx_platform.patches.schema import decode_image, decode_instance_map
    from stx_platform.viz import caption, legend, save_png

    rng = np.random.default_rng(seed)
    done = [r for r in manifest["slides"] if r["status"] == "done"]
    rows, comp, picks, by_sample = [], [], [], {}
    for rec in done:
        labels = by_sample[rec["sample_id"]] = _labels(out, rec)
        comp.append({"sample": rec["sample_id"], "organ": rec["organ"], "cells": rec["cells"],
                     **{c: int((labels == c).sum()) for c in LABEL_CLASSES}})
        t = pq.read_table(storage.join(out, rec["shard"]), columns=["cell_ids"])
        ids = pd.Series(np.concatenate([np.asarray(v, dtype=object) for v in t.column("cell_ids").to_pylist()]
                                       or [np.array([], dtype=object)]))
        counts = labels.reindex(ids).fillna(UNKNOWN).value_counts()
        rows.append({"organ": rec["organ"], **{c: int(counts.get(c, 0)) for c in LABEL_CLASSES},
                     "patches": rec["patches"]})
        if t.num_rows:
            picks += [(rec, int(i)) for i in rng.choice(t.num_rows, min(3, t.num_rows), replace=False)]
    by_organ = (pd.DataFrame(rows).groupby("organ").sum().reset_index() if rows
                else pd.DataFrame(columns=["organ", *LABEL_CLASSES, "patches"]))
    per_slide = pd.DataFrame(comp)
    folder = storage.join(out, "summary")
    storage.write_bytes(storage.join(folder, "nuclei_by_organ_and_class.csv"), by_organ.to_csv(index=False).encode())
    storage.write_bytes(storage.join(folder, "labels_per_slide.csv"), per_slide.to_csv(index=False).encode())
    md = ("## Nucleus instances in patches, by organ and label\n\n" + _markdown(by_organ)
          + "\n\n## Cell labels per slide\n\n" + _markdown(per_slide) + "\n" + _problems(manifest))
    storage.write_bytes(storage.join(folder, "summary.md"), md.encode())

    tiles = []
    for rec, i in [picks[j] for j in rng.permutation(len(picks))[:n_pictures]]:
        t = pq.read_table(storage.join(out, rec["shard"]), columns=["image", "instance_map", "cell_ids", "x", "y"])
        r = t.slice(i, 1).to_pylist()[0]
        labels = by_sample[rec["sample_id"]]
        classes = list(labels.reindex(pd.Index(r["cell_ids"])).fillna(UNKNOWN))
        img = outline_instances(decode_image(r["image"]), decode_instance_map(r["instance_map"]), classes)
        tiles.append(caption(img, f"{rec['sample_id']} ({rec['organ']}) x={r['x']} y={r['y']}", font_size=12))
    picture = None
    if tiles:
        cols = 4
        h, w = tiles[0].shape[:2]
        grid = np.full((h * -(-len(tiles) // cols) + 8 * (len(tiles) // cols), (w + 8) * cols, 3), 255, np.uint8)
        for k, tile in enumerate(tiles):
            y, x = (k // cols) * (h + 8), (k % cols) * (w + 8)
            grid[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        leg = legend(list(LABEL_CLASSES))
        full = np.full((max(grid.shape[0], leg.shape[0]), grid.shape[1] + leg.shape[1] + 8, 3), 255, np.uint8)
        full[:grid.shape[0], :grid.shape[1]] = grid
        full[:leg.shape[0], grid.shape[1] + 8:] = leg
        picture = storage.join(folder, "patches_by_label.png")
        save_png(picture, full)
    return {"by_organ": by_organ, "per_slide": per_slide, "markdown": md, "picture": picture, "folder": folder}


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(none)"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def log_to_mlflow(out: str, manifest: dict, summary: dict, tracking_uri: str) -> str:
    """One MLflow run for the build: its settings, counts and the summary files. Returns the run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("stx-build")
    with mlflow.start_run(run_name=f"build {manifest['label_set_id']}") as run:
        mlflow.log_params({"source": manifest["source"], "output": out, "label_set_id": manifest["label_set_id"],
                           "patch_config_hash": manifest["patch_config_hash"],
                           "markers_hash": manifest["markers_hash"]})
        mlflow.log_metrics({"slides_done": manifest["done"], "slides_failed": manifest["failed"],
                            "patches": sum(r["patches"] for r in manifest["slides"]),
                            "nuclei": sum(r["nuclei"] for r in manifest["slides"])})
        mlflow.log_text(summary["markdown"], "summary.md")
        mlflow.log_dict(manifest, "manifest.json")
        if summary["picture"]:
            import io

            from PIL import Image

            img = Image.open(io.BytesIO(storage.read_bytes(summary["picture"])))
            mlflow.log_image(np.asarray(img), "patches_by_label.png")
        return run.info.run_id
