"""Marker databases: the cell-type name -> class rules, votes / signatures / cancer overlap on a
hand-made database, the embedded default, and the loaders on synthetic and (when present) the
real PanglaoDB, CellMarker 2.0 and CancerSEA files."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import MARKERS, REPO, need

from stx_platform.labels.config import MarkerSources
from stx_platform.labels.markers import (
    CELL_TYPE_RULES,
    VOTE_CLASSES,
    MappingReport,
    MarkerDB,
    classify_cell_type,
    default_markers,
    is_malignant_cell_type,
    load_cancersea,
    load_cellmarker,
    load_markers,
    load_panglaodb,
)
from stx_platform.organs import ORGANS
from stx_platform.taxonomy import CONNECTIVE, EPITHELIAL, INFLAMMATORY, NEOPLASTIC, UNKNOWN

E, I, C, U = EPITHELIAL, INFLAMMATORY, CONNECTIVE, UNKNOWN
SYMBOL = re.compile(r"^[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*$")

# --------------------------------------------------------------------------------------------------
# name -> class rules (names as PanglaoDB and CellMarker 2.0 spell them)
# --------------------------------------------------------------------------------------------------

NAMES = [
    # Inflammatory
    ("T cells", I), ("Regulatory T(Treg) cell", I), ("Gamma delta(γδ) T cell", I), ("CD8+ T cell", I),
    ("T helper 17(Th17) cell", I), ("NK cells", I), ("Natural killer T (NKT) cell", I), ("B cells naive", I),
    ("Pre-B cell", I), ("Plasma cells", I), ("Plasmacytoid dendritic cell(pDC)", I), ("Kupffer cells", I),
    ("Langerhans cells", I), ("Microglia", I), ("Alveolar macrophages", I), ("Osteoclasts", I),
    ("Mast cells", I), ("Neutrophils", I), ("Myeloid-derived suppressor cells", I),
    ("Tumor‐associated macrophage (TAM)", I), ("Tumor-infiltrating regulatory T cell", I),
    ("Inflammatory Dendritic Epidermal Cell (IDEC)", I), ("LAMP3+ dentritic cell", I), ("Nuocytes", I),
    # Connective
    ("Fibroblasts", C), ("Cancer-associated fibroblast", C), ("Inflammatory cancer‐associated fibroblast (iCAF)", C),
    ("Endothelial cells (blood brain barrier)", C), ("Lymphatic endothelial cell", C), ("Tumor endothelial cell", C),
    ("Pericytes", C), ("Airway smooth muscle cells", C), ("Vascular smooth muscle cell(VSMC)", C),
    ("Myofibroblasts", C), ("Hepatic stellate cells", C), ("Mesenchymal stem cell", C),
    ("Follicular dendritic cell", C), ("Fibroblastic reticular cell", C), ("Adipocytes", C), ("Cardiomyocytes", C),
    ("Chondrocytes", C), ("Mesangial cells", C), ("Granulosa cells", C), ("Decidual cells", C),
    ("Peritubular myoid cells", C),
    # Epithelial
    ("Myoepithelial cells", E), ("Mesothelial cells", E), ("Epithelial cells", E), ("Keratinocytes", E),
    ("Hepatocytes", E), ("Cholangiocytes", E), ("Pulmonary alveolar type II cells", E), ("Club cell (Clara cell)", E),
    ("Ciliated cells", E), ("Goblet cells", E), ("Enterocytes", E), ("Intestinal stem cell", E),
    ("Beta cell(β cell)", E), ("Gamma (PP) cells", E), ("δ cell", E), ("Type B intercalated cell", E),
    ("Podocytes", E), ("Proximal tubule cells", E), ("Urothelial cells", E), ("Foveolar cells", E),
    ("Parietal cells", E), ("Parathyroid chief cells", E), ("Neuroendocrine cells", E), ("Merkel cells", E),
    ("Non-malignant epithelial cell", E), ("Luminal progenitor cell", E),
    # Unknown: none of PanNuke's classes
    ("Neurons", U), ("Astrocytes", U), ("Oligodendrocyte progenitor cells", U), ("Schwann cells", U),
    ("Peri-islet Schwann cells", U), ("Müller cells", U), ("Olfactory epithelial cells", U),
    ("Neuroepithelial cell", U), ("Retinal pigment epithelial cell", U), ("Melanocytes", U), ("Germ cells", U),
    ("Oocyte", U), ("Spermatozoa", U), ("Sertoli cells", U), ("Embryonic stem cells", U), ("Trophoblast cells", U),
    ("Nephron progenitor cell", U), ("Red blood cell (erythrocyte)", U), ("Platelets", U), ("Megakaryocytes", U),
    ("Hematopoietic stem cells", U), ("Stem cell", U), ("LGR5+ stem cell", U),
    # dropped: malignant cells (-> cancer set), haematological malignancies, states, hybrids, study labels
    ("Cancer stem cell", None), ("Cancer cell", None), ("Malignant cell", None), ("Circulating tumor cell", None),
    ("Leukemic stem cell", None), ("Malignant plasma cell", None), ("Epithelial-mesenchymal cell", None),
    ("Proliferative cell", None), ("SLC16A7+ cell", None), ("Lake et al.Science.Ex8", None), ("", None),
]


@pytest.mark.parametrize("name,expected", NAMES, ids=[n or "<empty>" for n, _ in NAMES])
def test_classify_cell_type(name, expected):
    assert classify_cell_type(name) == expected


def test_classify_is_case_and_plural_insensitive():
    for a, b in [("T CELLS", "t cell"), ("Macrophages", "macrophage"), ("FIBROBLAST", "Fibroblasts")]:
        assert classify_cell_type(a) == classify_cell_type(b) is not None


@pytest.mark.parametrize("name", ["Cancer stem cell", "Cancer cell", "Malignant cell", "Tumor cell",
                                  "Circulating tumour cell (CTC)", "Tumor epithelial cell", "Glioma stem cell",
                                  "Cutaneous squamous cell carcinoma (cSCC)cell", "Mesenchymal glioblastoma cell",
                                  "Breast cancer stem-like cell", "Paget cell"])
def test_malignant_names(name):
    assert is_malignant_cell_type(name)
    assert classify_cell_type(name) is None


@pytest.mark.parametrize("name", ["Cancer-associated fibroblast", "Tumor‐associated macrophage (TAM)",
                                  "Tumor-infiltrating lymphocyte(TIL)", "Tumor endothelial cell",
                                  "Pro-tumor type-2 pericyte", "Non-malignant epithelial cell",
                                  "EMT non-cancer stem cell(EMT non-CSC)", "Leukemic stem cell",
                                  "Multiple myeloma(MM) cell", "Epithelial cell"])
def test_not_malignant_names(name):
    assert not is_malignant_cell_type(name)


def test_rules_are_documented():
    assert len(CELL_TYPE_RULES) >= 10
    for cls, rx, what in CELL_TYPE_RULES:
        assert cls is None or cls in VOTE_CLASSES
        re.compile(rx)
        assert what.strip()
    assert VOTE_CLASSES == (EPITHELIAL, INFLAMMATORY, CONNECTIVE, UNKNOWN)


# --------------------------------------------------------------------------------------------------
# a hand-made database: exact numbers
# --------------------------------------------------------------------------------------------------


def _hand_db(changes: dict | None = None) -> MarkerDB:
    rows = [
        # gene, cell type, class, organ, source
        ("GENE_A", "T cells", I, "", "X"),
        ("GENE_A", "T cells", I, "", "Y"),          # the same cell type from another source counts once
        ("GENE_A", "T cells", I, "lung", "Y"),      # ... and from another organ, organ-agnostically
        ("GENE_A", "B cells", I, "", "X"),
        ("GENE_A", "Epithelial cells", E, "", "X"),
        ("gene_a", "Luminal epithelial cells", E, "Mammary gland", "X"),  # lower case, organ alias
        ("GENE_B", "Fibroblasts", C, "", "X"),
        ("GENE_B", "Pericytes", C, "", "X"),
        ("GENE_B", "Endothelial cells", C, "", "X"),
        ("GENE_B", "Macrophages", I, "", "X"),
        ("GENE_C", "Neurons", U, "", "X"),
        ("GENE_C", "Neurons", U, "", "X"),          # an exact duplicate row
    ]
    table = pd.DataFrame(rows, columns=["gene", "cell_type", "coarse", "organ", "source"])
    for (i, col), value in (changes or {}).items():
        table.loc[i, col] = value
    return MarkerDB(table, frozenset({"mki67", "TOP2A"}))


def test_table_is_normalised():
    db = _hand_db()
    t = db.table
    assert list(t.columns) == ["gene", "cell_type", "coarse", "organ", "source"]
    assert len(t) == 11                            # the exact duplicate is gone
    assert set(t["gene"]) == {"GENE_A", "GENE_B", "GENE_C"}
    assert set(t["organ"]) == {"", "breast", "lung"}
    assert db.cancer_genes == frozenset({"MKI67", "TOP2A"})
    assert db.genes == frozenset({"GENE_A", "GENE_B", "GENE_C"})


def test_votes_exact():
    db = _hand_db()
    v = db.votes(["gene_a", "GENE_B", "GENE_C", "NOPE"], None)
    assert v.shape == (4, 4) and v.dtype == np.float64
    # GENE_A: distinct cell types T, B (Inflammatory), Epithelial, Luminal epithelial (Epithelial)
    np.testing.assert_allclose(v[0], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(v[1], [0, 0.25, 0.75, 0])
    np.testing.assert_allclose(v[2], [0, 0, 0, 1])
    np.testing.assert_allclose(v[3], [0, 0, 0, 0])
    np.testing.assert_allclose(v[:3].sum(axis=1), 1.0)


def test_votes_organ_restriction():
    db = _hand_db()
    genes = ["GENE_A", "GENE_B", "NOPE"]
    breast = db.votes(genes, "breast")
    np.testing.assert_allclose(breast, [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(db.votes(genes, "Mammary gland"), breast)   # organ aliases work
    np.testing.assert_allclose(db.votes(genes, "lung")[0], [0, 1, 0, 0])
    np.testing.assert_allclose(db.votes(genes, "colon"), 0)                # no colon entries at all
    assert db.votes([], None).shape == (0, 4)
    with pytest.raises(ValueError, match="unknown organ"):
        db.votes(genes, "brain")


def test_votes_are_read_only_and_repeatable():
    db = _hand_db()
    a = db.votes(["GENE_A"], None)
    a[:] = 7                                   # a copy: the cached matrix is untouched
    np.testing.assert_allclose(db.votes(["GENE_A"], None), [[0.5, 0.5, 0, 0]])


def test_signatures_exact():
    db = _hand_db()
    genes = ["GENE_A", "GENE_B", "mki67", "GENE_C", "GENE_A", "NOPE"]
    assert db.signatures(genes, None) == {
        NEOPLASTIC: ["mki67"], EPITHELIAL: ["GENE_A"], INFLAMMATORY: ["GENE_A"], CONNECTIVE: ["GENE_B"]}
    # breast: GENE_A has breast entries (Epithelial only); GENE_B has none -> organ-agnostic votes
    assert db.signatures(genes, "breast") == {
        NEOPLASTIC: ["mki67"], EPITHELIAL: ["GENE_A"], INFLAMMATORY: [], CONNECTIVE: ["GENE_B"]}
    assert db.signatures(genes, None, min_share=0.8) == {
        NEOPLASTIC: ["mki67"], EPITHELIAL: [], INFLAMMATORY: [], CONNECTIVE: []}
    assert list(db.signatures([], None)) == [NEOPLASTIC, EPITHELIAL, INFLAMMATORY, CONNECTIVE]


def test_cancer_overlap_exact():
    db = _hand_db()
    assert db.cancer_overlap(["mki67", "TOP2A", "GENE_A", "X"]) == 0.5
    assert db.cancer_overlap(["GENE_A"]) == 0.0
    assert db.cancer_overlap([]) == 0.0


def test_content_hash_stable_and_sensitive():
    db = _hand_db()
    h = db.content_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    shuffled = MarkerDB(db.table.sample(frac=1, random_state=3), db.cancer_genes)
    assert shuffled.content_hash() == h
    assert _hand_db({(0, "cell_type"): "NK cells"}).content_hash() != h
    assert _hand_db({(6, "organ"): "colon"}).content_hash() != h
    assert MarkerDB(db.table, db.cancer_genes | {"MYC"}).content_hash() != h
    # the same in a fresh interpreter (no dependence on hash randomisation)
    code = ("import sys; sys.path.insert(0, 'tests'); from test_markers import _hand_db; "
            "print(_hand_db().content_hash())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == h


def test_combine_and_add():
    a = _hand_db()
    b = MarkerDB(pd.DataFrame({"gene": ["GENE_D"], "cell_type": ["Hepatocytes"], "coarse": [E],
                               "organ": ["liver"], "source": ["Z"]}), frozenset({"MYC"}))
    ab = a + b
    assert len(ab.table) == len(a.table) + 1
    assert ab.cancer_genes == {"MKI67", "TOP2A", "MYC"}
    np.testing.assert_allclose(ab.votes(["GENE_D"], "liver"), [[1, 0, 0, 0]])
    assert MarkerDB.combine(a, b).content_hash() == ab.content_hash() == (b + a).content_hash()
    assert (a + a).content_hash() == a.content_hash()


def test_marker_db_rejects_bad_tables():
    with pytest.raises(ValueError, match="unknown class"):
        _hand_db({(0, "coarse"): "Neoplastic"})
    with pytest.raises(ValueError, match="unknown organ"):
        _hand_db({(0, "organ"): "Brain"})
    with pytest.raises(ValueError, match="missing column"):
        MarkerDB(pd.DataFrame({"gene": ["A"], "cell_type": ["T cells"]}))


# --------------------------------------------------------------------------------------------------
# the embedded default
# --------------------------------------------------------------------------------------------------


def test_default_markers():
    db = default_markers()
    t = db.table
    assert db is default_markers()                               # loaded once
    assert 300 <= len(t) <= 700, len(t)
    assert set(t["source"]) == {"stx-default"}
    assert set(t["coarse"]) == set(VOTE_CLASSES)
    assert not t.duplicated().any()
    epithelial_organs = set(t.loc[t["coarse"] == EPITHELIAL, "organ"])
    missing = [o for o in ORGANS if o != "lymph_node" and o not in epithelial_organs]
    assert not missing, f"organs without epithelial markers: {missing}"
    assert "lymph_node" in set(t["organ"])
    bad = sorted(g for g in set(t["gene"]) if not SYMBOL.match(g))
    assert not bad, f"implausible symbols: {bad}"
    inconsistent = sorted({(ct, c) for ct, c in zip(t["cell_type"], t["coarse"]) if classify_cell_type(ct) != c})
    assert not inconsistent, f"cell types whose class disagrees with the rules: {inconsistent}"
    # the cancer set: a few hundred plausible symbols, hallmark genes in, lineage markers out
    assert 150 <= len(db.cancer_genes) <= 600
    assert all(SYMBOL.match(g) for g in db.cancer_genes)
    assert {"MKI67", "TOP2A", "MYC", "CA9", "SNAI2", "CD44"} <= db.cancer_genes
    assert not {"EPCAM", "KRT8", "KRT18", "KRT19", "CDH1", "PTPRC"} & db.cancer_genes
    # known facts
    v = db.votes(["PTPRC", "EPCAM", "COL1A1", "PECAM1", "HBB", "SFTPC"], None)
    assert [VOTE_CLASSES[i] for i in v.argmax(axis=1)] == [I, E, C, C, U, E]
    assert db.votes(["SFTPC"], "lung")[0, 0] == 1.0 and db.votes(["SFTPC"], "breast").sum() == 0
    rep = db.report.source("stx-default")
    assert rep.rows_voting == len(t) and rep.cancer_genes == len(db.cancer_genes) and not rep.dropped


def test_default_files_are_documented():
    root = REPO / "stx_platform" / "data" / "markers"
    for name in ("default_markers.csv", "default_cancer_genes.txt"):
        head = (root / name).read_text().splitlines()[:5]
        assert all(line.startswith("#") for line in head[:3]), name
        assert "Curation" in (root / name).read_text(), name


def test_votes_are_fast():
    db = default_markers()
    genes = list(db.table["gene"].unique()[:200]) + [f"NOT{i}" for i in range(165)]
    db.votes(genes, None), db.votes(genes, "breast")
    t0 = time.perf_counter()
    for k in range(100):
        db.votes(genes, "breast" if k % 2 else None)
    assert time.perf_counter() - t0 < 0.1


# --------------------------------------------------------------------------------------------------
# loaders on small synthetic files: formats, mapping, errors
# --------------------------------------------------------------------------------------------------

PANGLAO_COLUMNS = ["species", "official gene symbol", "cell type", "nicknames", "ubiquitousness index",
                   "product description", "gene type", "canonical marker", "germ layer", "organ",
                   "sensitivity_human", "sensitivity_mouse", "specificity_human", "specificity_mouse"]


def _panglao_frame() -> pd.DataFrame:
    rows = [("Mm Hs", "PTPRC", "T cells", "Immune system"), ("Hs", "CD3E", "T cells", "Immune system"),
            ("Mm", "Cd3g", "T cells", "Immune system"), ("Mm Hs", "ELF5", "Luminal epithelial cells", "Mammary gland"),
            ("Mm Hs", "MUC5AC", "Foveolar cells", "GI tract"), ("Mm Hs", "MUC2", "Goblet cells", "GI tract"),
            ("Mm Hs", "SNAP25", "Neurons", "Brain"), ("Mm Hs", "FOXL2", "Granulosa cells", "Reproductive"),
            ("Mm Hs", "X1", "Glomus cells", "Brain"), ("Mm Hs", "X2", "Glomus cells", "Brain")]
    df = pd.DataFrame([(s, g, c, "", 0.1, "", "protein-coding gene", 1, "", o, 1, 1, 0, 0) for s, g, c, o in rows],
                      columns=PANGLAO_COLUMNS)
    return df


def test_load_panglaodb_synthetic(tmp_path):
    path = tmp_path / "panglao.tsv.gz"
    with gzip.open(path, "wt") as f:
        _panglao_frame().to_csv(f, sep="\t", index=False)
    db = load_panglaodb(str(path))
    t = db.table.set_index("gene")
    assert "CD3G" not in t.index                               # mouse-only row
    assert t.loc["PTPRC", "organ"] == "" and t.loc["PTPRC", "coarse"] == I
    assert t.loc["ELF5", "organ"] == "breast"
    assert t.loc["MUC5AC", "organ"] == "stomach" and t.loc["MUC2", "organ"] == "colon"
    assert t.loc["FOXL2", "organ"] == "ovary" and t.loc["FOXL2", "coarse"] == C
    assert t.loc["SNAP25", "coarse"] == U
    assert db.cancer_genes == frozenset()
    rep = db.report.source("PanglaoDB")
    assert rep.dropped == {"Glomus cells": 2}
    assert rep.rows_read == 9 and rep.rows_voting == 7
    assert rep.names_by_class == {E: 3, I: 1, C: 1, U: 1}
    assert "Glomus cells (2)" in db.report.to_markdown()
    json.dumps(db.report.as_dict())
    assert load_panglaodb(str(path), species="Mm").table["gene"].tolist().count("CD3G") == 1


def _cellmarker_frame() -> pd.DataFrame:
    rows = [  # species, tissue_class, tissue_type, cancer_type, cell_type, cell_name, Symbol
        ("Human", "Blood", "Peripheral blood", "Normal", "Normal cell", "T cell", "CD3E"),
        ("Human", "Breast", "Breast", "Normal", "Normal cell", "Luminal epithelial cell", "ESR1"),
        ("Human", "Intestine", "Small intestine", "Normal", "Normal cell", "Paneth cell", "DEFA5"),
        ("Human", "Intestine", "Colon", "Normal", "Normal cell", "Goblet cell", "MUC2"),
        ("Human", "Breast", "Breast", "Breast Cancer", "Cancer cell", "Cancer stem cell", "CD44"),
        ("Human", "Breast", "Breast", "Breast Cancer", "Cancer cell", "Cancer stem cell", "ALDH1A1"),
        ("Human", "Lung", "Lung", "Lung Cancer", "Cancer cell", "Cancer-associated fibroblast", "FAP"),
        ("Human", "Lung", "Lung", "Lung Cancer", "Cancer cell", "Cancer cell", ""),          # empty Symbol
        ("Human", "Blood", "Blood", "Acute Myeloid Leukemia", "Cancer cell", "Cancer stem cell", "CD34"),
        ("Human", "Bone marrow", "Bone marrow", "Leukemia", "Cancer cell", "Leukemic stem cell", "IL3RA"),
        ("Mouse", "Brain", "Brain", "Normal", "Normal cell", "Neuron", "Rbfox3"),
    ]
    cols = ["species", "tissue_class", "tissue_type", "cancer_type", "cell_type", "cell_name", "Symbol"]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(3, "uberonongology_id", "UBERON_0000000")
    df["marker"] = df["Symbol"]
    df["GeneID"] = "1"
    return df


def _check_cellmarker(db: MarkerDB):
    t = db.table.set_index("gene")
    assert set(t.index) == {"CD3E", "ESR1", "DEFA5", "MUC2", "FAP"}
    assert t.loc["CD3E", "organ"] == "" and t.loc["ESR1", "organ"] == "breast"
    assert t.loc["DEFA5", "organ"] == "" and t.loc["MUC2", "organ"] == "colon"
    assert t.loc["FAP", "coarse"] == C and t.loc["FAP", "organ"] == "lung"
    assert db.cancer_genes == {"CD44", "ALDH1A1"}                # not the leukaemic CD34 / IL3RA
    rep = db.report.source("CellMarker2")
    assert rep.malignant == {"Cancer stem cell": 2}
    assert rep.dropped == {"Cancer stem cell (in a haematological cancer)": 1, "Leukemic stem cell": 1}
    assert any("1 rows with an empty Symbol" in n for n in rep.notes)


def test_load_cellmarker_csv_gz_and_xlsx(tmp_path):
    df = _cellmarker_frame()
    gz = tmp_path / "Cell_marker_Human.csv.gz"
    with gzip.open(gz, "wt") as f:
        df.to_csv(f, index=False)
    xlsx = tmp_path / "Cell_marker_Human.xlsx"
    df.to_excel(xlsx, index=False)
    a, b = load_cellmarker(str(gz)), load_cellmarker(str(xlsx))
    _check_cellmarker(a)
    _check_cellmarker(b)
    assert a.content_hash() == b.content_hash()


def test_load_cancersea_synthetic(tmp_path):
    (tmp_path / "EMT.txt").write_text("EnsembleID\tGeneName\nENSG1\tSNAI2\nENSG2\tvim\n")
    (tmp_path / "Hypoxia.txt").write_text("EnsembleID\tGeneName\nENSG3\tCA9\nENSG1\tSNAI2\n")
    (tmp_path / "README.md").write_text("not a gene set")
    assert load_cancersea(str(tmp_path)) == {"SNAI2", "VIM", "CA9"}
    assert load_cancersea(str(tmp_path / "EMT.txt")) == {"SNAI2", "VIM"}


def test_loader_errors_name_the_file(tmp_path):
    bad = tmp_path / "panglao_no_organ.tsv"
    _panglao_frame().drop(columns=["organ"]).to_csv(bad, sep="\t", index=False)
    with pytest.raises(ValueError, match=r"panglao_no_organ\.tsv.*missing column.*organ"):
        load_panglaodb(str(bad))
    with pytest.raises(ValueError, match=r"nowhere\.tsv.*not found"):
        load_panglaodb(str(tmp_path / "nowhere.tsv"))
    cm = tmp_path / "cm.csv"
    _cellmarker_frame().drop(columns=["Symbol"]).to_csv(cm, index=False)
    with pytest.raises(ValueError, match=r"cm\.csv.*missing column.*Symbol"):
        load_cellmarker(str(cm))
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=r"broken\.csv\.gz"):
        load_cellmarker(str(broken))
    with pytest.raises(ValueError, match=r"no_such_folder.*not found"):
        load_cancersea(str(tmp_path / "no_such_folder"))
    sets = tmp_path / "sets"
    sets.mkdir()
    (sets / "EMT.txt").write_text("EnsembleID\tSymbol\nENSG1\tSNAI2\n")
    with pytest.raises(ValueError, match=r"EMT\.txt.*missing column.*GeneName"):
        load_cancersea(str(sets))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*no \*\.txt"):
        load_cancersea(str(tmp_path / "empty"))


def test_load_markers_combinations(tmp_path):
    assert load_markers(MarkerSources()) is default_markers()
    pg = tmp_path / "panglao.tsv"
    _panglao_frame().to_csv(pg, sep="\t", index=False)
    (tmp_path / "cs").mkdir()
    (tmp_path / "cs" / "EMT.txt").write_text("EnsembleID\tGeneName\nENSG1\tSNAI2\n")
    cm = tmp_path / "cm.csv"
    _cellmarker_frame().to_csv(cm, index=False)

    only_votes = load_markers(MarkerSources(panglaodb=str(pg)))            # cancer set: the default's
    assert only_votes.cancer_genes == default_markers().cancer_genes
    assert any("embedded default cancer gene set" in n for n in only_votes.report.notes)
    assert set(only_votes.table["source"]) == {"PanglaoDB"}

    only_cancer = load_markers(MarkerSources(cancersea=str(tmp_path / "cs")))  # votes: the default's
    assert only_cancer.cancer_genes == {"SNAI2"}
    assert set(only_cancer.table["source"]) == {"stx-default"}
    assert any("votes from the embedded default" in n for n in only_cancer.report.notes)

    everything = load_markers(MarkerSources(panglaodb=str(pg), cellmarker=str(cm), cancersea=str(tmp_path / "cs")))
    assert set(everything.table["source"]) == {"PanglaoDB", "CellMarker2"}
    assert everything.cancer_genes == {"SNAI2", "CD44", "ALDH1A1"}
    assert [s.source for s in everything.report.sources] == ["PanglaoDB", "CellMarker2", "CancerSEA"]
    assert not everything.report.notes
    md = everything.report.to_markdown()
    assert "## CellMarker2" in md and "Leukemic stem cell (1)" in md


# --------------------------------------------------------------------------------------------------
# the real files (skipped when ../shared/data/markers is absent)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panglao() -> MarkerDB:
    return load_panglaodb(str(need(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv")))


@pytest.fixture(scope="module")
def cellmarker() -> MarkerDB:
    return load_cellmarker(str(need(MARKERS / "Cell_marker_Human.csv.gz")))


@pytest.fixture(scope="module")
def cancersea() -> frozenset[str]:
    return load_cancersea(str(need(MARKERS / "cancersea")))


def _top(db: MarkerDB, genes, organ=None) -> list[str]:
    return [VOTE_CLASSES[i] for i in db.votes(genes, organ).argmax(axis=1)]


def test_real_panglaodb(panglao):
    raw = pd.read_csv(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv", sep="\t",
                      usecols=["species", "official gene symbol"])
    human = raw[raw["species"].fillna("").str.contains("Hs")]
    mouse_only = set(raw.loc[raw["species"] == "Mm", "official gene symbol"].str.upper()) - set(
        human["official gene symbol"].str.upper())
    assert not mouse_only & panglao.genes
    rep = panglao.report.source("PanglaoDB")
    assert rep.rows_read == len(human)
    assert set(panglao.table["coarse"]) == set(VOTE_CLASSES)
    assert {"breast", "colon", "stomach", "kidney", "liver", "lung", "pancreas", "skin"} <= set(panglao.table["organ"])
    assert _top(panglao, ["PTPRC", "PECAM1", "CD3E", "COL1A1", "SFTPC", "ALB"]) == [I, C, I, C, E, E]
    epcam = panglao.votes(["EPCAM"], None)[0]
    assert epcam[0] == epcam.max() and epcam[0] > epcam[1] + epcam[2]
    assert _top(panglao, ["EPCAM"], "liver") == [E]
    assert len(rep.dropped) <= 10 and sum(rep.dropped.values()) < 0.05 * rep.rows_read, (
        f"PanglaoDB names dropped: {rep.dropped}")
    assert panglao.cancer_genes == frozenset()


def test_real_cellmarker(cellmarker):
    t = cellmarker.table
    rep = cellmarker.report.source("CellMarker2")
    assert any(n.startswith("6899 rows with an empty Symbol") for n in rep.notes), rep.notes
    assert rep.rows_read == 60877 - 6899
    assert (t["gene"] != "").all() and set(t["coarse"]) <= set(VOTE_CLASSES)
    assert not {"Cancer stem cell", "Cancer cell", "Malignant cell"} & set(t["cell_type"])
    assert {"Cancer stem cell", "Cancer cell", "Malignant cell"} <= set(rep.malignant)
    assert (t.loc[t["cell_type"] == "Cancer-associated fibroblast", "coarse"] == C).all()
    assert {"CD44", "PROM1", "ALDH1A1", "EPCAM"} <= cellmarker.cancer_genes
    assert 200 <= len(cellmarker.cancer_genes) <= 2000
    assert _top(cellmarker, ["PTPRC", "CD3E", "EPCAM", "COL1A1", "PECAM1", "SFTPC", "MS4A1"]) == [I, I, E, C, C, E, I]
    assert {"breast", "colon", "kidney", "liver", "lung", "lymph_node"} <= set(t["organ"])
    dropped_rows = sum(rep.dropped.values())
    assert len(rep.dropped) < 250 and dropped_rows < 0.06 * rep.rows_read, (
        f"{len(rep.dropped)} CellMarker names dropped ({dropped_rows} rows): {rep.dropped}")


def test_real_cancersea(cancersea):
    files = sorted(p.name for p in (MARKERS / "cancersea").glob("*.txt"))
    assert len(files) == 14
    assert 1000 <= len(cancersea) <= 1600
    assert {"MKI67", "VIM", "CD44"} <= cancersea
    assert all(g == g.upper() and g for g in cancersea)


def test_real_combined(panglao, cellmarker, cancersea):
    srcs = MarkerSources(panglaodb=str(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv"),
                         cellmarker=str(MARKERS / "Cell_marker_Human.csv.gz"), cancersea=str(MARKERS / "cancersea"))
    db = load_markers(srcs)
    assert db.content_hash() == MarkerDB(pd.concat([panglao.table, cellmarker.table]),
                                         cellmarker.cancer_genes | cancersea).content_hash()
    genes = list(db.table["gene"].drop_duplicates().sample(300, random_state=0)) + [f"NOT{i}" for i in range(65)]
    db.votes(genes, None), db.votes(genes, "breast")
    t0 = time.perf_counter()
    for k in range(100):
        db.votes(genes, "breast" if k % 2 else None)
    assert time.perf_counter() - t0 < 0.1
    sig = db.signatures(["MKI67", "EPCAM", "CD3E", "COL1A1"], "lung")
    assert sig[NEOPLASTIC][:1] == ["MKI67"] and "CD3E" in sig[INFLAMMATORY] and "COL1A1" in sig[CONNECTIVE]
    assert isinstance(db.report, MappingReport) and len(db.report.sources) == 3
