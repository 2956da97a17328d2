"""`stx experiment`'s pieces without Ray: the organ split, the equal training budget, a PanNuke fold
as a dataset that the training ingest reads as the fold says, held-out patches scored against the
annotation, the majority type per nucleus, and both tables from two checkpoints. The commands
themselves run end to end in tests/test_jobs.py (through `ray job submit`, data on S3)."""

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import build_small_dataset

from stx_platform import storage
from stx_platform.build.manifest import done_slides
from stx_platform.experiments.heldout import DatasetPatches, NucleusVotes, type_votes
from stx_platform.experiments.pannuke_dataset import LABEL_SET, write_pannuke_dataset
from stx_platform.experiments.split import organ_split
from stx_platform.organs import canonical_organ
from stx_platform.sources.pannuke import PanNukeFold
from stx_platform.taxonomy import DEAD, PANNUKE_TYPE_ORDER, SCORED_CLASSES, UNKNOWN
from stx_platform.training.config import TrainConfig
from stx_platform.training.ingest import load_labels, make_sample

SLIDES = [{"sample_id": "A", "organ": "breast"}, {"sample_id": "B", "organ": "Thyroid"},
          {"sample_id": "C", "organ": "colon"}, {"sample_id": "D", "organ": "breast"}]


def test_split_holds_out_the_papers_organs_else_the_last_organ():
    s = organ_split(SLIDES)
    assert (s.heldout, s.heldout_organs, s.train, s.train_organs) == (["B"], ["thyroid"], ["A", "C", "D"],
                                                                      ["breast", "colon"])
    s = organ_split([x for x in SLIDES if x["sample_id"] != "B"])
    assert s.heldout == ["C"] and s.train == ["A", "D"] and "--heldout" in s.why
    assert organ_split(SLIDES, ["Breast"]).heldout == ["A", "D"]
    with pytest.raises(ValueError, match="liver.*not among"):
        organ_split(SLIDES, ["liver"])
    with pytest.raises(ValueError, match="at least one training and one held-out"):
        organ_split([SLIDES[0], SLIDES[3]])


def test_both_models_get_the_same_number_of_training_samples():
    from stx_platform.experiments.run import PANNUKE, ST, budgets

    cfg = TrainConfig.preset_config("cpu")          # every patch, each epoch
    e = cfg.epochs
    b = budgets(cfg, n_st=500, n_pannuke=2000)
    assert [(c.epochs, c.samples_per_epoch) for c in (b[ST], b[PANNUKE])] == [(e, 500), (e, 500)]
    b = budgets(cfg, n_st=500, n_pannuke=200)       # a small fold: more passes over it
    assert (b[PANNUKE].samples_per_epoch, b[PANNUKE].epochs) == (200, math.ceil(e * 500 / 200))
    assert b[PANNUKE].model == b[ST].model == cfg.model and b[PANNUKE].lr == cfg.lr
    tiny = TrainConfig.preset_config("tiny")        # 192 per epoch: never more than the ST patches
    assert budgets(tiny, n_st=100, n_pannuke=2000)[PANNUKE].samples_per_epoch == 100


def test_a_pannuke_fold_becomes_a_dataset_the_ingest_reads_as_the_fold_says(pannuke_dir, tmp_path):
    out = str(tmp_path / "pn")
    doc = write_pannuke_dataset(pannuke_dir, out)
    fold = PanNukeFold(pannuke_dir)
    slides = done_slides(out)
    assert doc["label_set_id"] == LABEL_SET and sum(s["patches"] for s in slides) == len(fold)
    assert {s["organ"] for s in slides} == set(fold.types.tolist())
    labels = load_labels(out)
    n_dead = 0
    for s in slides:
        for rec in pq.read_table(storage.join(out, s["shard"])).to_pylist():
            item = fold[int(rec["patch_id"].rsplit("_", 1)[1])]
            sample = make_sample(rec, labels, augment=False)
            assert np.array_equal(sample["binary"], (item.instances > 0).astype(sample["binary"].dtype))
            for k, cls in item.classes.items():
                want = -1 if cls == DEAD else PANNUKE_TYPE_ORDER.index(cls)   # Dead: no label can be Dead
                assert (sample["type"][item.instances == k] == want).all(), (rec["patch_id"], k, cls)
                n_dead += cls == DEAD
            assert rec["organ"] == item.tissue and sample["tissue"] >= 0
    assert n_dead > 0                                   # the synthetic fold has apoptotic nuclei
    assert write_pannuke_dataset(pannuke_dir, out) == doc   # done once: kept


def test_majority_type_per_nucleus_leaves_background_out_and_sums_over_patches():
    inst = np.zeros((8, 8), np.int32)
    inst[:4, :4] = 1                                    # 16 px
    inst[5:, 5:] = 2                                    # 9 px
    prob = np.zeros((6, 8, 8), np.float32)
    prob[0] = 0.5                                       # background most probable everywhere
    prob[PANNUKE_TYPE_ORDER.index("Connective")] = 0.3
    prob[PANNUKE_TYPE_ORDER.index("Neoplastic"), :4, :3] = 0.4     # 12 of nucleus 1's 16 px
    v = type_votes(prob, inst)
    assert v.shape == (3, 6) and v[1].sum() == 16 and v[2].sum() == 9
    assert PANNUKE_TYPE_ORDER[v[1].argmax()] == "Neoplastic" and PANNUKE_TYPE_ORDER[v[2].argmax()] == "Connective"

    votes = NucleusVotes()
    votes.add("S", ["a", "b"], v)                       # a: 12 Neoplastic, 4 Connective
    other = np.zeros((2, 6), np.int64)
    other[1, PANNUKE_TYPE_ORDER.index("Connective")] = 20   # a again, in an overlapping patch
    votes.add("S", ["a"], other)
    dead = np.zeros((2, 6), np.int64)
    dead[1, PANNUKE_TYPE_ORDER.index(DEAD)] = 5
    votes.add("T", ["a"], dead)
    got = votes.classes()
    assert got.to_dict() == {"S/a": "Connective", "S/b": "Connective", "T/a": UNKNOWN}


@pytest.fixture(scope="module")
def built(hest_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("exp-ds"))
    recs = build_small_dataset(out, hest_root, slides=3)
    return out, recs


def _truth(ref: str) -> pd.Series:
    from stx_platform.sources.cells_only import read_cells

    s = read_cells(ref)
    t = s.ground_truth["class"].astype(str)
    t.index = t.index.astype(str)
    return t


def test_heldout_patches_carry_the_annotation_as_truth(built):
    out, recs = built
    lung = next(r for r in recs if canonical_organ(r.organ) == "lung")
    truth = _truth(lung.ref)
    patches = DatasetPatches(out, [lung.sample_id], {lung.sample_id: truth})
    assert len(patches) == lung.patches > 0
    scored = 0
    for i in range(0, len(patches), 7):
        it, ids = patches[i], patches.cell_ids(i)
        assert it.image.shape[:2] == it.instances.shape and it.tissue == lung.organ
        assert sorted(np.unique(it.instances[it.instances > 0])) == list(range(1, len(ids) + 1))
        for k, cid in enumerate(ids, 1):
            want = truth.get(cid, UNKNOWN)
            assert it.classes[k] == (want if want in SCORED_CLASSES else UNKNOWN)
            scored += it.classes[k] != UNKNOWN
    assert scored > 0
    with pytest.raises(ValueError, match="no done slide NOPE"):
        DatasetPatches(out, ["NOPE"])


def test_tables_from_two_checkpoints_score_the_same_nuclei(built, tmp_path):
    """Both tables from two (untrained) checkpoints: Table 2 has the paper's six columns per model;
    Table 3's label rows and model rows are scored on the same annotated nuclei."""
    from stx_platform.experiments import run as X
    from stx_platform.experiments.split import OrganSplit
    from stx_platform.labels.config import LabelConfig
    from stx_platform.labels.markers import default_markers
    from stx_platform.model import build_model
    from stx_platform.training.checkpoint import save_checkpoint

    out, recs = built
    lung = next(r for r in recs if canonical_organ(r.organ) == "lung")
    split = OrganSplit([r.sample_id for r in recs if r is not lung], [lung.sample_id], ["breast", "colon"], ["lung"],
                       "test")
    setup = X.Setup(str(tmp_path), out, split, {lung.sample_id: lung.ref}, "unused", "unused")
    for seed, name in enumerate(X.MODELS):
        import torch

        torch.manual_seed(seed)
        ck = save_checkpoint(tmp_path / name.split()[0] / "checkpoint_epoch_0001", build_model("tiny"), 0)
        setup.models[name] = {"checkpoint": str(ck), "epochs": 1, "samples_per_epoch": 1}
    truth, samples = X.heldout_truth(setup)
    assert set(truth) == {lung.sample_id}
    scores = X.score_models(setup, truth, overlays=2, say=lambda m: None)
    md, doc = X.table2(scores)
    assert list(doc) == list(X.MODELS) and "| Dice | Jaccard | bPQ | F1 | Precision | Recall |" in md
    for r in doc.values():
        assert set(X.TABLE2_KEYS) <= set(r)
        assert all(r[k] is None or 0 <= r[k] <= 1 for k in X.TABLE2_KEYS)    # None: nothing predicted
        assert r["images"] == lung.patches
    assert scores[X.ST]["evaluation"].overlay is not None

    md3, doc3, results = X.table3(setup, scores, truth, samples, LabelConfig(), default_markers(), ["TopDown", "Ours"])
    assert list(doc3) == ["TopDown", "Ours", *X.MODELS]
    n = {r["n_cells"] for r in doc3.values()}
    assert len(n) == 1 and 0 < n.pop() <= int(truth[lung.sample_id].isin(SCORED_CLASSES).sum())
    assert doc3["Ours"]["macro_f1"] > 0.5                # the labels on the same nuclei are good
    assert all(0 <= r["accuracy"] <= 1 for r in doc3.values()) and "| PanNuke model |" in md3
