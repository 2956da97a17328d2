"""Label quality on data the method was not written for: a second expression generator
(``heldout_expression``), scanpy's bundled PBMC 68k, with the embedded markers and (when present)
the real databases; and the rules behind each fix of the improved method."""

import numpy as np
import pandas as pd
import pytest

import heldout_expression as H
from conftest import MARKERS, need
from stx_platform.labels.config import LabelConfig, MarkerSources
from stx_platform.labels.evaluate import score
from stx_platform.labels.markers import MarkerDB, default_markers, load_markers
from stx_platform.labels.pipeline import label_expression
from stx_platform.labels.vote import cancer_enrichment
from stx_platform.taxonomy import CONNECTIVE, EPITHELIAL, INFLAMMATORY, NEOPLASTIC, SCORED_CLASSES

def _labels(adata, organ, db, **cfg) -> pd.Series:
    res = label_expression(adata, organ, LabelConfig(**cfg), db, sample_id="t")
    return pd.Series(res.cells["label"].to_numpy(), index=res.cells["cell_id"].to_numpy())


def _truth(adata) -> pd.Series:
    return adata.obs["truth"].astype(str)


@pytest.fixture(scope="module")
def breast():
    return H.make_section("breast", "300", 4000, seed=11, mix="tumour_rich")


@pytest.fixture(scope="module")
def colon_normal():
    return H.make_section("colon", "300", 4000, seed=12, mix="normal_rich")


@pytest.mark.parametrize("section, margin", [("breast", 0.05), ("colon_normal", 0.0)])
def test_improved_beats_the_papers_rules_on_a_generator_it_was_not_written_for(section, margin, request):
    """A tumour-rich breast section, where the paper's rules fail (stroma voted Epithelial, tumour
    not Neoplastic), and a normal-rich colon section, where they do well and must stay so."""
    a = request.getfixturevalue(section)
    organ = "breast" if section == "breast" else "colon"
    db = default_markers()
    ours = score(_truth(a), _labels(a, organ, db))
    paper = score(_truth(a), _labels(a, organ, db, method="paper"))
    assert ours["macro_f1"] >= paper["macro_f1"] + margin, (ours["macro_f1"], paper["macro_f1"])
    assert ours["macro_f1"] >= 0.85
    # every class present in the truth is predicted
    present = set(_truth(a)) & set(SCORED_CLASSES)
    assert all(ours["f1"][c] > 0.3 for c in present), ours["f1"]


def test_stroma_of_an_organ_is_connective_because_every_organ_has_stroma(breast):
    """Breast entries list ACTA2 / MYH11 for myoepithelium only; with the organ's entries alone
    fibroblasts, pericytes and smooth muscle were voted Epithelial."""
    db = default_markers()
    stroma = breast.obs["cell_type"].isin(["fibroblast", "caf", "pericyte", "smooth_muscle"]).to_numpy()
    ours = _labels(breast, "breast", db)
    alone = _labels(breast, "breast", db, shared_lineages=False)
    assert (ours[stroma] == CONNECTIVE).mean() > 0.9
    assert (alone[stroma] == CONNECTIVE).mean() < (ours[stroma] == CONNECTIVE).mean()


def test_myoepithelium_stays_epithelial_and_tumour_turns_neoplastic(breast):
    db = default_markers()
    ours = _labels(breast, "breast", db)
    ct = breast.obs["cell_type"].to_numpy()
    assert (ours[ct == "myoepithelial"] == EPITHELIAL).mean() > 0.8
    assert (ours[ct == "luminal"] == EPITHELIAL).mean() > 0.6
    assert (ours[np.isin(ct, ["tumour", "dcis"])] == NEOPLASTIC).mean() > 0.6


def test_cancer_overlap_is_tested_against_the_panels_base_rate():
    panel = [f"G{i}" for i in range(200)]
    # 40 % of the panel is "cancer", as with PanglaoDB + CellMarker + CancerSEA on real panels
    db = MarkerDB(pd.DataFrame({"gene": ["G0"], "cell_type": ["T cell"], "coarse": [INFLAMMATORY]}),
                  frozenset(panel[:80]))
    cancer, other = iter(panel[:80]), iter(panel[100:])
    at_chance = [next(cancer) if i % 5 in (0, 2) else next(other) for i in range(20)]   # 8 of 20, spread
    ratio, p = cancer_enrichment(at_chance, panel, db.cancer_genes)
    assert ratio == 0.4 and ratio > 0.25 and p > 0.5    # the paper's rule calls it cancer; the test does not
    enriched = panel[0:12] + panel[100:108]             # 12 cancer genes at the top
    assert cancer_enrichment(enriched, panel, db.cancer_genes)[1] < 0.01
    assert cancer_enrichment([], panel, db.cancer_genes) == (0.0, 1.0)


def test_pbmc_immune_cells_are_inflammatory():
    a = H.pbmc68k()
    r = score(_truth(a), _labels(a, "blood", default_markers()))
    assert r["accuracy"] > 0.9 and r["macro_f1"] > 0.9


def test_scores_average_over_the_classes_present():
    t = pd.Series([INFLAMMATORY] * 4, index=list("abcd"))
    assert score(t, t)["macro_f1"] == 1.0
    r = score(t, pd.Series([INFLAMMATORY, INFLAMMATORY, CONNECTIVE, "Unknown"], index=list("abcd")))
    # Inflammatory F1 = 2/3 (p 1, r 1/2); Connective predicted but absent: 0
    assert np.isclose(r["macro_f1"], (2 / 3 + 0) / 2)
    assert np.isclose(r["labelled_macro_f1"], (0.8 + 0) / 2) and r["predicted_unknown"] == 0.25


def test_with_the_real_databases_immune_and_stromal_cells_are_never_cancer(breast):
    need(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv")
    db = load_markers(MarkerSources(panglaodb=str(MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv"),
                                    cellmarker=str(MARKERS / "Cell_marker_Human.csv.gz"),
                                    cancersea=str(MARKERS / "cancersea")))
    truth = _truth(breast)
    ours = _labels(breast, "breast", db)
    paper = _labels(breast, "breast", db, method="paper")
    r_ours, r_paper = score(truth, ours), score(truth, paper)
    assert r_ours["macro_f1"] >= r_paper["macro_f1"] + 0.05
    nonepi = truth.isin([INFLAMMATORY, CONNECTIVE]).to_numpy()
    assert (ours[nonepi] == NEOPLASTIC).mean() < 0.02
    # the paper's rule turns every epithelial cluster Neoplastic: no cell is Epithelial
    assert r_ours["f1"][EPITHELIAL] > r_paper["f1"][EPITHELIAL] + 0.2


def _db(rows, cancer=()):
    return MarkerDB(pd.DataFrame(rows, columns=["gene", "cell_type", "coarse", "organ"]), frozenset(cancer))


def _classify(z_rows, genes, db, organ="breast", **cfg):
    from stx_platform.labels.vote import classify_clusters_improved

    return classify_clusters_improved(np.array(z_rows, float), np.array(genes, object), organ, db,
                                      LabelConfig(**cfg))


def test_cell_cycle_genes_never_vote_for_a_lineage():
    """A cycling carcinoma cluster: MKI67 and TOP2A lead its DEGs, and databases list them for
    proliferating T cells; its lineage is in the genes after them."""
    db = _db([("MKI67", "Proliferating T cell", INFLAMMATORY, ""), ("TOP2A", "Proliferating T cell", INFLAMMATORY, ""),
              ("KRT8", "Luminal epithelial cell", EPITHELIAL, "breast"),
              ("EPCAM", "Luminal epithelial cell", EPITHELIAL, "breast")])
    genes = ["MKI67", "TOP2A", "KRT8", "EPCAM", "G5"]
    z = [[30, 28, 12, 10, 0]]
    assert _classify(z, genes, db).loc[0, "label"] == EPITHELIAL
    assert _classify(z, genes, db, skip_state_genes=False).loc[0, "label"] == INFLAMMATORY


def test_spill_over_genes_do_not_outvote_the_clusters_own_marker():
    """An immune cluster on a small panel: PTPRC far up, three stromal genes barely up from the
    neighbours' transcripts."""
    db = _db([("PTPRC", "Leukocyte", INFLAMMATORY, ""), ("LUM", "Fibroblast", CONNECTIVE, ""),
              ("VWF", "Endothelial cell", CONNECTIVE, ""), ("POSTN", "Fibroblast", CONNECTIVE, "")])
    genes = ["PTPRC", "LUM", "VWF", "POSTN"]
    z = [[21.0, 4.5, 3.8, 3.1]]
    assert _classify(z, genes, db).loc[0, "label"] == INFLAMMATORY
    assert _classify(z, genes, db, effect_weights=False).loc[0, "label"] == CONNECTIVE


def test_shared_lineages_bring_stroma_but_not_neurons_into_an_organs_votes():
    db = _db([("ACTA2", "Myoepithelial cell", EPITHELIAL, "breast"), ("COL1A1", "Fibroblast", CONNECTIVE, ""),
              ("NEFL", "Neuron", "Unknown", "")])
    v = db.votes(["ACTA2", "COL1A1", "NEFL"], "breast", shared=True)
    assert v[0, 0] == 1 and v[1, 2] == 1 and v[2].sum() == 0
    assert db.votes(["COL1A1"], "breast").sum() == 0            # the organ's entries alone


def test_cancer_genes_that_mark_the_organs_epithelium_are_no_evidence_against_all_cells():
    db = _db([("KRT5", "Myoepithelial cell", EPITHELIAL, "breast"), ("COL1A1", "Fibroblast", CONNECTIVE, "")],
             cancer={"KRT5", "MKI67", "COL1A1"})
    assert db.cancer_genes_beyond_lineage("breast") == {"MKI67", "COL1A1"}
    assert db.cancer_genes_beyond_lineage(None) == {"MKI67", "COL1A1"}


def test_tumour_genes_are_cancer_genes_of_no_normal_lineage_and_no_cell_state():
    """CD45 reaches CellMarker's cancer rows as a negative-selection marker, KRT5 marks breast
    myoepithelium; neither says "tumour" in an epithelial cluster. ERBB2 and MKI67 have no normal
    lineage; MKI67 is a cell state of every lineage."""
    db = _db([("KRT5", "Myoepithelial cell", EPITHELIAL, "breast"), ("PTPRC", "Leukocyte", INFLAMMATORY, ""),
              ("CEACAM6", "Neutrophil", INFLAMMATORY, ""), ("CEACAM6", "Goblet cell", EPITHELIAL, "colon")],
             cancer={"KRT5", "PTPRC", "ERBB2", "MKI67", "CEACAM6"})
    assert db.cancer_genes_of_epithelium() == {"KRT5", "ERBB2", "MKI67", "CEACAM6"}
    assert db.tumour_genes("breast", frozenset({"MKI67"})) == {"ERBB2", "CEACAM6"}


def test_a_targeted_panels_tumour_genes_make_an_epithelial_cluster_neoplastic():
    """A 20-gene-like breast panel: two tumour genes among lineage markers. The carcinoma cluster
    up-regulates both (and its lineage), normal luminal cells neither; the enrichment test cannot
    reach p < 0.05 with two genes of eight, the coverage rule decides."""
    db = _db([("ESR1", "Luminal epithelial cell", EPITHELIAL, "breast"),
              ("GATA3", "Luminal epithelial cell", EPITHELIAL, "breast"),
              ("KRT14", "Myoepithelial cell", EPITHELIAL, "breast"), ("PTPRC", "Leukocyte", INFLAMMATORY, ""),
              ("LUM", "Fibroblast", CONNECTIVE, ""), ("VWF", "Endothelial cell", CONNECTIVE, "")],
             cancer={"ERBB2", "CEACAM6", "PTPRC", "LUM"})
    genes = ["GATA3", "ESR1", "ERBB2", "CEACAM6", "KRT14", "PTPRC", "LUM", "VWF"]
    z = [[20, 15, 16, 22, -8, -9, -6, -3],     # carcinoma
         [18, 14, -9, -7, -6, -8, -5, -3],     # normal luminal
         [-5, -6, -4, -3, 25, -2, -1, -2],     # myoepithelium
         [-9, -9, -8, -8, -8, 30, -2, -1]]     # T cells
    t = _classify(z, genes, db)
    assert list(t["label"]) == [NEOPLASTIC, EPITHELIAL, EPITHELIAL, INFLAMMATORY], t
    assert list(t["tumour_share"]) == [1.0, 0.0, 0.0, 0.0]
    assert _classify(z, genes, db, tumour_coverage=False).loc[0, "label"] == EPITHELIAL


def test_on_20_gene_panels_every_class_is_found_and_the_paper_is_beaten():
    """The held-out generator's 20-gene breast panel (tumour-rich): the paper's top-20 overlap is
    the same for every cluster, so no cell was Neoplastic."""
    a = H.make_section("breast", "20", 4000, seed=21, mix="tumour_rich")
    db = default_markers()
    ours = score(_truth(a), _labels(a, "breast", db))
    paper = score(_truth(a), _labels(a, "breast", db, method="paper"))
    assert ours["macro_f1"] >= paper["macro_f1"] + 0.05, (ours, paper)
    assert all(ours["f1"][c] > 0.5 for c in SCORED_CLASSES), ours["f1"]


def test_the_papers_label_set_ignores_the_improved_methods_options():
    paper = LabelConfig.load(None, ["method=paper"])
    assert paper.method == "paper"
    assert paper.label_set_id("h") == LabelConfig(method="paper", min_z=3.0, cancer_alpha=0.2).label_set_id("h")
    assert LabelConfig().label_set_id("h") != LabelConfig(min_z=3.0).label_set_id("h") != paper.label_set_id("h")
