"""Label evaluation: exact scores on a worked example, and how Unknown counts."""

import numpy as np
import pandas as pd

from stx_platform.labels.evaluate import confusion_figure, score, table3
from stx_platform.taxonomy import CONNECTIVE as C
from stx_platform.taxonomy import EPITHELIAL as E
from stx_platform.taxonomy import INFLAMMATORY as I
from stx_platform.taxonomy import NEOPLASTIC as N
from stx_platform.taxonomy import UNKNOWN as U


def test_scores_on_a_worked_example():
    truth = pd.Series([N, N, E, E, I, I, C, C, U, U], index=[f"c{i}" for i in range(10)])
    pred = pd.Series([N, E, E, E, I, U, C, N, N, I], index=truth.index)
    r = score(truth, pred)
    # ground-truth Unknown (c8, c9) left out: 8 cells, correct c0 c2 c3 c4 c6 -> 5/8
    assert r["n_cells"] == 8 and r["accuracy"] == 5 / 8
    # F1: N p=1/2 r=1/2 -> 1/2; E p=2/3 r=1 -> 0.8; I p=1 r=1/2 -> 2/3; C p=1 r=1/2 -> 2/3
    assert np.isclose(r["macro_f1"], (0.5 + 0.8 + 2 / 3 + 2 / 3) / 4)
    assert r["predicted_unknown"] == 1 / 8
    assert r["confusion"].loc[I, U] == 1 and r["confusion"].loc[C, N] == 1
    assert r["confusion"].to_numpy().sum() == 8


def test_missing_predictions_count_as_unknown_and_table_renders():
    truth = pd.Series([N, E, I, C], index=list("abcd"))
    r = score(truth, pd.Series([N, E], index=list("ab")))
    assert r["accuracy"] == 0.5 and r["confusion"].loc[I, U] == 1
    md = table3({"Ours": r, "Other": score(truth, truth)}, ["Other", "Ours"])
    lines = md.splitlines()
    assert lines[0].startswith("| Model | Macro F1 | Acc |") and lines[2].startswith("| Other | 1.0000 | 1.0000 |")
    fig = confusion_figure({"Ours": r})
    assert len(fig.axes) == 1
