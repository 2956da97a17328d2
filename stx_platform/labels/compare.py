"""The paper's label comparison (Table 3) on the same slides, marker database and ground truth:
the reference-free baselines, the paper's rules (``method: paper``) and its "w/o Hier" ablation,
the improved method's ablations (one fix switched off each) and the configured method ("Ours")."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from stx_platform.labels.cache import StageCache
from stx_platform.labels.config import ABLATIONS, LabelConfig
from stx_platform.labels.evaluate import score
from stx_platform.labels.pipeline import label_expression
from stx_platform.organs import canonical_organ
from stx_platform.progress import Progress

OURS, WO_HIER, PAPER = "Ours", "Paper w/o Hier", "Paper"
#: Label-method rows: name -> overrides of the configured LabelConfig ("Ours" is the config itself).
LABEL_ROWS: dict[str, dict] = {WO_HIER: {"method": "paper", "hierarchy": False}, PAPER: {"method": "paper"},
                               **{f"Ours {k}": v for k, v in ABLATIONS.items()}, OURS: {}}
#: Table 3's row order.
METHOD_ORDER = ("TopDown", "UCell", "AUCell", "CellAssign", *LABEL_ROWS)


def predict_all(sample, config: LabelConfig, db, methods=METHOD_ORDER, cache_url: str | None = None,
                say: Progress | None = None) -> dict[str, pd.Series]:
    """Predicted class per cell (indexed by cell id) for each method on one sample."""
    from stx_platform.labels.baselines import BASELINES

    say = say or Progress(None)
    adata = sample.expression
    cache = StageCache(cache_url, sample.sample_id)
    out: dict[str, pd.Series] = {}
    for m in methods:
        t0 = time.perf_counter()
        if m in LABEL_ROWS:
            cfg = config.model_copy(update=LABEL_ROWS[m])
            res = label_expression(adata, sample.organ, cfg, db, sample_id=sample.sample_id, cache=cache)
            pred = pd.Series(res.cells["label"].to_numpy(), index=res.cells["cell_id"].to_numpy())
        else:
            sigs = db.signatures(list(map(str, adata.var_names)), canonical_organ(sample.organ))
            pred = pd.Series(np.asarray(BASELINES[m](adata, sigs).labels), index=np.asarray(adata.obs_names, str))
        out[m] = pred
        say(f"{m}: {time.perf_counter() - t0:.1f} s")
    return out


def compare(samples, config: LabelConfig, db, methods=METHOD_ORDER, cache_url: str | None = None,
            progress: bool = True) -> tuple[dict[str, dict], pd.DataFrame]:
    """Scores per method over all cells of all samples pooled, and a per-sample table."""
    truths, preds = [], {m: [] for m in methods}
    rows = []
    for s in samples:
        if s.ground_truth is None:
            raise ValueError(f"sample {s.sample_id}: no ground-truth annotation to evaluate against")
        say = Progress(s.sample_id if progress else None)
        p = predict_all(s, config, db, methods, cache_url, say)
        truth = s.ground_truth["class"].astype(str)
        truth.index = truth.index.astype(str)
        for m in methods:
            r = score(truth, p[m])
            rows.append({"sample": s.sample_id, "organ": s.organ, "method": m,
                         "macro_f1": r["macro_f1"], "accuracy": r["accuracy"]})
            preds[m].append(p[m].rename(lambda c, sid=s.sample_id: f"{sid}/{c}"))
        truths.append(truth.rename(lambda c, sid=s.sample_id: f"{sid}/{c}"))
    truth_all = pd.concat(truths)
    results = {m: score(truth_all, pd.concat(preds[m])) for m in methods}
    return results, pd.DataFrame(rows)
