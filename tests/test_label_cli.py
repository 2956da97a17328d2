"""`stx label` and `stx label-eval` end to end on synthetic slides (local and s3://)."""

import pandas as pd
import pytest
from conftest import MARKERS, need

from stx_platform.cli import main
from stx_platform.labels.compare import METHOD_ORDER
from stx_platform.labels.table import read_label_table
from stx_platform.sources import list_samples, read_sample
from stx_platform.taxonomy import LABEL_CLASSES


def test_label_writes_one_table_per_slide_and_relabels_from_cache(hest_root, tmp_path, capsys):
    out = str(tmp_path / "labels")
    assert main(["label", "--sample", hest_root, "--out", out]) == 0
    text = capsys.readouterr().out
    set_id = text.split("label set ")[1].split()[0]
    refs = list_samples(hest_root)
    for ref in refs:
        s = read_sample(ref)
        cells, meta = read_label_table(f"{out}/{set_id}/{s.sample_id}.parquet")
        assert list(cells.index) == list(s.cell_ids) and set(cells["label"]) <= set(LABEL_CLASSES)
        assert meta["label_set_id"] == set_id and meta["config"]["resolution"] == 4.0
    assert "cache hits: none" in text
    # a threshold-only change: new label set, DEGs from the cache
    assert main(["label", "--sample", refs[0], "--out", out, "--set", "cancer_alpha=0.01"]) == 0
    text = capsys.readouterr().out
    assert "cache hits: degs" in text and set_id not in text.split("label set ")[1].split()[0]


def test_label_eval_writes_table3_and_the_method_beats_every_baseline(hest_root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["label-eval", "--samples", hest_root, "--out", str(out)]) == 0
    md = (out / "table3.md").read_text()
    rows = {ln.split("|")[1].strip(): float(ln.split("|")[2]) for ln in md.splitlines()
            if ln.startswith("| ") and not ln.startswith("| Model")}
    assert list(rows) == list(METHOD_ORDER)
    assert {"Paper", "Paper w/o Hier", "Ours w/o shared lineages", "Ours w/o cancer test"} <= set(rows)
    # the default beats every baseline and the paper's rules
    assert all(rows["Ours"] > rows[k] for k in ("TopDown", "UCell", "AUCell", "CellAssign", "Paper",
                                                "Paper w/o Hier")), rows
    assert (out / "confusion.png").stat().st_size > 10_000
    per = pd.read_csv(out / "per_sample.csv")
    assert len(per) == 3 * len(METHOD_ORDER)


def test_label_eval_with_the_real_marker_databases(hest_root, tmp_path):
    need(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv")
    out = tmp_path / "eval"
    assert main(["label-eval", "--samples", hest_root, "--out", str(out), "--methods", "Paper", "Ours",
                 "--panglaodb", str(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv")]) == 0
    assert "PanglaoDB" in (out / "table3.md").read_text()


def test_label_errors_are_one_line(tmp_path, capsys):
    assert main(["label", "--sample", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no samples under")
    assert main(["label", "--sample", str(tmp_path), "--out", str(tmp_path), "--panglaodb",
                 str(tmp_path / "missing.tsv")]) == 2
    assert "missing.tsv" in capsys.readouterr().err


@pytest.mark.slow
def test_label_tables_and_caches_on_s3(s3_server, hest_root, capsys):
    ref = list_samples(hest_root)[0]
    out = f"{s3_server}/labels"
    assert main(["label", "--sample", ref, "--out", out]) == 0
    set_id = capsys.readouterr().out.split("label set ")[1].split()[0]
    cells, meta = read_label_table(f"{out}/{set_id}/{ref.rsplit('#', 1)[1]}.parquet")
    assert len(cells) > 300
    assert main(["label", "--sample", ref, "--out", out, "--set", "top_n=8"]) == 0
    assert "cache hits: degs" in capsys.readouterr().out


def test_markers_reports_the_mapping(tmp_path, capsys):
    assert main(["markers", "--out", str(tmp_path / "r.md"), "--mapping", str(tmp_path / "m.csv")]) == 0
    assert "embedded default" in capsys.readouterr().out
    m = pd.read_csv(tmp_path / "m.csv")
    assert set(m["class"]) == {"Epithelial", "Inflammatory", "Connective", "Unknown"}
    assert m.loc[m["cell_type"].str.contains(r"\bT cells?\b"), "class"].eq("Inflammatory").all()
    assert "| Epithelial |" in (tmp_path / "r.md").read_text()
