"""HoVer-Net targets, post-processing and PanNuke metrics (stx_platform.targets / postprocess / metrics)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.segmentation import expand_labels

from stx_platform.metrics import (binary_pq, centroids, detection_scores, dice, instance_classes, jaccard,
                                  match_centroids, multiclass_pq, pannuke_scores, pq, remap_label)
from stx_platform.postprocess import instances_from_maps, nucleus_table
from stx_platform.targets import binary_map, hv_map, hv_map_loop, targets, type_map
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER

# --------------------------------------------------------------------------- targets


def test_hv_of_a_1x5_nucleus():
    inst = np.zeros((3, 7), np.int32)
    inst[1, 1:6] = 4
    hv = hv_map(inst)
    assert hv.shape == (2, 3, 7) and hv.dtype == np.float32
    np.testing.assert_array_equal(hv[0, 1], [0, -1, -0.5, 0, 0.5, 1, 0])
    assert not hv[1].any()                      # one row: no vertical extent
    assert not hv[:, [0, 2]].any()              # background stays 0
    np.testing.assert_array_equal(hv_map_loop(inst), hv)


def test_hv_of_a_3x3_nucleus_and_rounding_of_the_centre():
    inst = np.zeros((5, 5), np.int32)
    inst[1:4, 1:4] = 1
    hv = hv_map(inst)
    col = np.array([-1, 0, 1], np.float32)
    np.testing.assert_array_equal(hv[0, 1:4, 1:4], np.tile(col, (3, 1)))     # channel 0: x (columns)
    np.testing.assert_array_equal(hv[1, 1:4, 1:4], np.tile(col[:, None], (1, 3)))  # channel 1: y (rows)
    # 1x4: centre of mass 1.5 rounds half up to column 2 -> offsets -2, -1, 0, 1
    inst = np.zeros((1, 4), np.int32)
    inst[0, :] = 1
    np.testing.assert_array_equal(hv_map(inst)[0, 0], [-1, -0.5, 0, 1])
    np.testing.assert_array_equal(hv_map_loop(inst)[0, 0], [-1, -0.5, 0, 1])


def _random_instances(rng, size=96, n=30, grow=7):
    inst = np.zeros((size, size), np.int64)
    pts = rng.integers(0, size, (n, 2))
    ids = rng.choice(np.arange(1, 10 * n), n, replace=False) * 3   # sparse, unordered ids
    inst[pts[:, 0], pts[:, 1]] = ids
    inst = expand_labels(inst, grow)                                 # touching nuclei, some on the border
    inst[rng.uniform(size=inst.shape) < 0.03] = 0                     # holes / ragged shapes
    return inst


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_hv_equals_the_loop(seed):
    rng = np.random.default_rng(seed)
    inst = _random_instances(rng, grow=int(rng.integers(3, 12)))
    inst[0, :5] = inst.max() + 5                                      # a nucleus along the border
    inst[-1, -1] = inst.max() + 7                                     # a one-pixel nucleus in the corner
    a, b = hv_map(inst), hv_map_loop(inst)
    assert np.abs(a - b).max() < 1e-6
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a[:, inst == 0], 0)
    assert np.abs(hv_map(inst.astype(np.uint16)) - b).max() < 1e-6


def test_hv_and_targets_into_given_arrays_and_large_sparse_ids():
    rng = np.random.default_rng(9)
    inst = _random_instances(rng, size=80, n=25)
    want = hv_map_loop(inst)
    big = np.where(inst > 0, inst + 5_000_000, 0)                   # ids far above the pixel count: compacted
    np.testing.assert_array_equal(hv_map(big), want)
    out = np.full((3, 2, 80, 80), 7, np.float32)
    assert np.shares_memory(hv_map(inst, out=out[1]), out)
    np.testing.assert_array_equal(out[1], want)
    assert (out[[0, 2]] == 7).all()
    with pytest.raises(ValueError):
        hv_map(inst, out=np.zeros((2, 80, 81), np.float32))
    with pytest.raises(ValueError):
        hv_map(inst, out=np.zeros((2, 80, 160), np.float32)[:, :, ::2])
    classes = {int(i): ("Unknown" if i % 2 else int(i) % 5 + 1) for i in np.unique(inst[inst > 0])}
    ref = targets(inst, classes)
    dst = {"binary": np.zeros((80, 80), np.int64), "hv": np.zeros((2, 80, 80), np.float32),
           "type": np.zeros((80, 80), np.int64)}
    got = targets(inst, classes, out=dst)
    for k in ref:
        assert got[k] is dst[k] and np.array_equal(got[k], ref[k]), k
    shifted = targets(big, {i + 5_000_000: c for i, c in classes.items()})   # compacted ids keep their classes
    for k in ref:
        assert np.array_equal(shifted[k], ref[k]), k
    np.testing.assert_array_equal(hv_map(inst.T), hv_map_loop(np.ascontiguousarray(inst.T)))   # a strided view


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_hv_equals_the_loop_for_every_id_dtype_width_and_layout(dtype):
    """The word-at-a-time run scan (2**k pixels per 64-bit word, a padded copy for widths or
    layouts that cannot be viewed so) against the per-nucleus loop: runs reaching a row's end,
    crossing word boundaries, single pixels, ids up to the dtype's range."""
    rng = np.random.default_rng(int(np.dtype(dtype).itemsize))
    for size, width in ((64, 64), (40, 37), (9, 3), (1, 17)):
        inst = _random_instances(rng, size=max(size, width), n=12, grow=4)[:size, :width]
        ids = np.unique(inst[inst > 0])
        top = min(np.iinfo(dtype).max, 4 * inst.size + 1000)          # dense ids: no renumbering
        inst = np.searchsorted(ids, inst) + 1
        inst[inst > ids.size] = 0
        inst = np.where(inst > 0, top - inst, 0).astype(dtype)
        inst[:, -1] = inst[:, 0]                                           # runs that end at the border
        want = hv_map_loop(inst)
        np.testing.assert_array_equal(hv_map(inst), want)
        np.testing.assert_array_equal(hv_map(np.asfortranarray(inst)), want)
        wide = np.zeros((inst.shape[0], 2 * inst.shape[1]), dtype)
        wide[:, ::2] = inst
        np.testing.assert_array_equal(hv_map(wide[:, ::2]), want)         # a strided view
        raw = np.zeros(inst.nbytes + 1, np.uint8)
        odd = raw[1:].view(dtype).reshape(inst.shape)                     # words not 8-byte aligned
        odd[...] = inst
        np.testing.assert_array_equal(hv_map(odd), want)


def test_float16_hv_is_the_float32_map_cast_as_torch_casts_it():
    """targets() into a float16 ``hv`` writes, bit for bit, torch's (and numpy's) round-to-nearest-even
    cast of the float32 map: every table entry (each offset a / m a float32 map can hold at 256 px),
    and whole maps of sparse ids, non-square shapes and int8 / int16 type rows."""
    import torch

    from stx_platform.targets import half_table

    size = 257
    m, a = np.meshgrid(np.arange(1, size), np.arange(size), indexing="ij")
    ok = a <= m
    f32 = (a[ok] / m[ok]).astype(np.float32)                              # what hv_map stores
    want = torch.from_numpy(f32).to(torch.float16).numpy().view(np.uint16)
    assert np.array_equal(half_table(size)[1:][ok], want)
    assert np.array_equal(torch.from_numpy(-f32[f32 > 0]).to(torch.float16).numpy().view(np.uint16),
                          want[f32 > 0] | 0x8000)                         # negative offsets: the sign bit
    rng = np.random.default_rng(4)
    for shape, tdt in (((96, 96), np.int8), ((50, 81), np.int16), ((7, 300), np.int8)):
        inst = _random_instances(rng, size=max(shape), n=30, grow=6)[:shape[0], :shape[1]]
        inst = np.where(inst > 0, inst + 10_000_000 * (tdt == np.int16), 0)
        classes = {int(i): ("Unknown" if i % 3 == 0 else int(i) % 5 + 1) for i in np.unique(inst[inst > 0])}
        ref = targets(inst, classes)
        dst = {"binary": np.full(shape, 9, np.uint8), "hv": np.full((2, *shape), 7, np.float16),
               "type": np.full(shape, 9, tdt)}
        got = targets(inst, classes, out=dst)
        assert got["hv"] is dst["hv"]
        cast = torch.from_numpy(ref["hv"]).to(torch.float16).numpy()
        assert np.array_equal(got["hv"].view(np.uint16), cast.view(np.uint16))
        assert np.array_equal(got["binary"], ref["binary"]) and np.array_equal(got["type"], ref["type"])
    with pytest.raises(ValueError):
        targets(inst, classes, out={**dst, "hv": np.zeros((2, *shape), np.float64)})


def test_hv_of_an_empty_map():
    assert not hv_map(np.zeros((4, 5), np.int32)).any()


def test_type_map_unknown_and_background():
    inst = np.zeros((6, 6), np.int32)
    inst[0:2, 0:2] = 1
    inst[3:5, 3:5] = 2
    inst[0:2, 4:6] = 3
    t = type_map(inst, {1: "Neoplastic", 2: "Unknown", 3: 3})
    assert t.dtype == np.int64
    assert (t[inst == 1] == PANNUKE_TYPE_ORDER.index("Neoplastic")).all()
    assert (t[inst == 2] == -1).all()
    assert (t[inst == 3] == 3).all()
    assert (t[inst == 0] == 0).all()
    # array indexed by id, negative = unknown; another ignore value
    np.testing.assert_array_equal(type_map(inst, np.array([0, 5, -1, 2]), unknown_index=-100)[inst == 2], -100)
    with pytest.raises(ValueError):
        type_map(inst, {1: "Neoplastic", 2: "Epithelial"})          # id 3 has no class
    with pytest.raises(ValueError):
        type_map(inst, np.array([1, 2, 3]))                          # not indexed by id (too short)
    out = targets(inst, {1: "Neoplastic", 2: "Unknown", 3: "Epithelial"})
    assert out["binary"].dtype == np.uint8 and out["hv"].dtype == np.float32 and out["type"].dtype == np.int64
    np.testing.assert_array_equal(out["binary"], binary_map(inst))
    assert out["hv"].shape == (2, 6, 6)


# --------------------------------------------------------------------------- round trip


def _ellipses(rng, size=256, n=40):
    """Ellipse nuclei, a few touching (overlaps cut by the first-drawn nucleus), none tiny."""
    inst = np.zeros((size, size), np.int32)
    cls = {}
    k = 0
    for _ in range(n * 4):
        if k == n:
            break
        cx, cy = rng.uniform(12, size - 12, 2)
        ax = rng.uniform(6, 11, 2)
        m = np.zeros((size, size), np.uint8)
        cv2.ellipse(m, (int(cx), int(cy)), (int(ax[0]), int(ax[1])), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        m = m.astype(bool)
        if (m & (inst > 0)).sum() > 0.08 * m.sum():
            continue
        k += 1
        inst[m & (inst == 0)] = k
        cls[k] = int(rng.integers(1, 6))
    return inst, cls


def _touching_pairs(inst):
    a, b = inst[:, :-1], inst[:, 1:]
    c, d = inst[:-1], inst[1:]
    pairs = {(x, y) for x, y in zip(np.r_[a.ravel(), c.ravel()], np.r_[b.ravel(), d.ravel()]) if x and y and x != y}
    return len(pairs)


def _perfect_predictions(inst, cls):
    t = targets(inst, cls)
    return t["binary"].astype(np.float32), t["hv"], np.eye(6, dtype=np.float32)[t["type"]].transpose(2, 0, 1)


def test_round_trip_recovers_nuclei_and_classes():
    rng = np.random.default_rng(11)
    touching = 0
    for _ in range(3):
        inst, cls = _ellipses(rng)
        touching += _touching_pairs(inst)
        pred, table = instances_from_maps(*_perfect_predictions(inst, cls), magnification=40)
        assert pred.dtype == np.int32 and set(np.unique(pred)) == set(range(pred.max() + 1))
        assert list(table["id"]) == list(range(1, pred.max() + 1))
        assert binary_pq(inst, pred) > 0.9
        r = pq(inst, pred)
        assert r.matches.tp >= 0.9 * len(cls)
        by_id = table.set_index("id")
        for t_id, p_id in zip(r.matches.true_ids, r.matches.pred_ids):
            assert by_id.loc[p_id, "class"] == cls[t_id]
            assert by_id.loc[p_id, f"prob_{PANNUKE_TYPE_ORDER[cls[t_id]]}"] > 0.9   # mean one-hot inside the nucleus
        _, mpq = multiclass_pq(inst, cls, pred, dict(zip(table["id"], table["class"])))
        assert mpq > 0.85
    assert touching >= 3                                               # the case is not trivial


def test_class_vote_skips_background_and_no_type_map():
    inst = np.zeros((8, 8), np.int32)
    inst[1:5, 1:5] = 1                                                 # 16 px: 10 background, 4 class 3, 2 class 2
    inst[6:8, 6:8] = 2                                                 # only background
    probs = np.zeros((6, 8, 8), np.float32)
    probs[0] = 1
    probs[:, 1, 1:5] = 0
    probs[3, 1, 1:5] = 1
    probs[:, 2, 1:3] = 0
    probs[2, 2, 1:3] = 1
    table = nucleus_table(inst, probs)
    assert table["class"].tolist() == [3, 0]
    assert table["prob_Connective"].tolist() == [0.25, 0.0]
    assert table[["x", "y"]].to_numpy().tolist() == [[2.5, 2.5], [6.5, 6.5]]
    b = (inst > 0).astype(np.float32)
    _, t2 = instances_from_maps(b, hv_map(inst), None)
    assert (t2["class"] == -1).all()


# --------------------------------------------------------------------------- PQ


def _box(m, r0, r1, c0, c1, v):
    m[r0:r1, c0:c1] = v


def test_pq_hand_worked():
    true = np.zeros((40, 60), np.int32)
    pred = np.zeros((40, 60), np.int32)
    _box(true, 0, 10, 0, 10, 1)
    _box(pred, 0, 10, 0, 10, 7)          # perfect match
    _box(true, 0, 10, 20, 30, 2)
    _box(pred, 0, 10, 20, 26, 9)         # 60 px inside 100: IoU 0.6
    _box(true, 20, 30, 0, 10, 3)         # missed: FN
    _box(pred, 20, 30, 40, 50, 4)        # spurious: FP
    r = pq(true, pred)
    assert (r.matches.tp, r.matches.fp, r.matches.fn) == (2, 1, 1)
    assert r.dq == pytest.approx(2 / 3)
    assert r.sq == pytest.approx(0.8)
    assert r.pq == pytest.approx(1.6 / 3)
    assert sorted(zip(r.matches.true_ids.tolist(), r.matches.pred_ids.tolist())) == [(1, 7), (2, 9)]
    np.testing.assert_allclose(sorted(r.matches.iou), [0.6, 1.0])
    assert r.matches.unpaired_true.tolist() == [3] and r.matches.unpaired_pred.tolist() == [4]
    # IoU exactly 0.5 does not match
    p2 = np.zeros_like(pred)
    _box(p2, 0, 10, 0, 5, 1)
    assert pq(true == 1, p2).matches.tp == 0
    assert dice(true, pred) == pytest.approx(2 * 160 / (300 + 260))
    assert jaccard(true, pred) == pytest.approx(160 / 400)


def test_pq_empty_images():
    empty = np.zeros((10, 10), np.int32)
    some = empty.copy()
    some[2:5, 2:5] = 1
    assert all(np.isnan(v) for v in pq(empty, empty)[:3])
    assert np.isnan(binary_pq(empty, empty))
    assert pq(empty, some)[:3] == (0.0, 0.0, 0.0)                       # no truth, some predicted: 0
    assert np.isnan(binary_pq(empty, some))                              # ... but the image is not scored
    assert pq(some, empty).pq == 0.0 and binary_pq(some, empty) == 0.0
    assert np.isnan(dice(empty, empty)) and dice(some, empty) == 0.0


def test_multiclass_pq_nan_rules():
    true = np.zeros((20, 40), np.int32)
    pred = np.zeros((20, 40), np.int32)
    _box(true, 0, 5, 0, 5, 1)
    _box(pred, 0, 5, 0, 5, 1)            # class 1 -> 1: right
    _box(true, 0, 5, 10, 15, 2)
    _box(pred, 0, 5, 10, 15, 2)          # class 2 -> 3: wrong
    _box(pred, 10, 15, 20, 25, 3)        # class 4 predicted, absent from the truth
    per, mpq = multiclass_pq(true, {1: 1, 2: 2}, pred, {1: 1, 2: 3, 3: 4}, n_classes=6)
    assert per[0] == 1.0 and per[1] == 0.0
    assert np.isnan(per[2:]).all()
    assert mpq == 0.5
    # a class map gives the same classes as the mapping
    cmap = np.where(true == 1, 1, np.where(true == 2, 2, 0))
    assert multiclass_pq(true, cmap, pred, {1: 1, 2: 3, 3: 4})[1] == 0.5
    assert instance_classes(true, cmap)[1].tolist() == [1, 2]


def test_tissue_averaging_and_remap():
    t = np.zeros((20, 20), np.int32)
    _box(t, 0, 5, 0, 5, 1)
    t2 = t.copy()
    _box(t2, 10, 15, 10, 15, 2)
    empty = np.zeros_like(t)
    images = [(t, t, "A"),                 # bPQ 1
              (t2, t, "A"),                # TP 1, FN 1: 2/3
              (empty, empty, "A"),         # NaN: excluded
              (t, empty, "B")]             # 0
    res = pannuke_scores([i[0] for i in images], [{1: 1, 2: 1}] * 4, [i[1] for i in images], [{1: 1}] * 4,
                         [i[2] for i in images])
    assert res["per_tissue"]["A"]["bPQ"] == pytest.approx(5 / 6)
    assert res["per_tissue"]["B"]["bPQ"] == 0.0
    assert res["bPQ"] == pytest.approx(5 / 12)       # not the image mean 5/9
    assert res["mPQ"] == pytest.approx(5 / 12)       # one class only: same numbers
    assert np.isnan(res["bPQ_per_image"][2])
    assert res["detection"]["tp"] == 2 and res["detection"]["fn"] == 2 and res["detection"]["fp"] == 0
    r = remap_label(np.array([[0, 7, 7], [3, 0, 100]]))
    np.testing.assert_array_equal(r, [[0, 2, 2], [1, 0, 3]])


def test_perfect_predictions_on_synthetic_pannuke(pannuke_dir):
    from stx_platform.sources.pannuke import PanNukeFold

    fold = PanNukeFold(pannuke_dir)
    ti, tc, pi, pc, ts = [], [], [], [], []
    for i in range(len(fold)):
        item = fold[i]
        pred, table = instances_from_maps(*_perfect_predictions(item.instances, item.classes))
        ti.append(item.instances)
        tc.append(item.classes)
        pi.append(pred)
        pc.append(dict(zip(table["id"], table["class"])))
        ts.append(item.tissue)
    res = pannuke_scores(ti, tc, pi, pc, ts)
    assert res["bPQ"] > 0.85 and res["mPQ"] > 0.8
    assert res["detection"]["f1"] > 0.9
    assert res["detection"]["classification"]["accuracy"] > 0.99
    assert res["dice"] > 0.97


# --------------------------------------------------------------------------- detection


def test_detection_radius():
    true = [(np.array([[50.0, 50.0], [150.0, 150.0]]), np.array([1, 2]))]
    pred = [(np.array([[61.0, 50.0], [150.0, 163.0]]), np.array([1, 2]))]   # 11 px and 13 px away
    d = detection_scores(true, pred, radius=12)
    assert (d["tp"], d["fp"], d["fn"]) == (1, 1, 1)
    assert d["f1"] == 0.5
    assert detection_scores(true, [(np.array([[62.0, 50.0]]), np.array([1]))])["tp"] == 1   # 12 px: inclusive
    assert detection_scores(true, pred, radius=6)["tp"] == 0                               # 20x radius


def test_hungarian_beats_greedy():
    true_xy = np.array([[0.0, 0.0], [20.0, 0.0]])
    pred_xy = np.array([[9.0, 0.0], [-11.0, 0.0]])
    # greedy nearest-first would pair true 0 with pred 0 (9 px) and leave true 1 and pred 1 unmatched
    for pairing in ("hovernet", "gated"):
        ti, pi = match_centroids(true_xy, pred_xy, 12, pairing)
        assert sorted(zip(ti.tolist(), pi.tolist())) == [(0, 1), (1, 0)]
    assert detection_scores([(true_xy, None)], [(pred_xy, None)])["f1"] == 1.0


def test_pairing_as_hovernet_drops_far_pairs_after_assigning_gated_keeps_the_most_pairs():
    """Two true nuclei A, B and two predictions P, Q: A-Q 1 px and B-P 12.5 px sum to less than
    A-P 11.5 px and B-Q 11.5 px. HoVer-Net / CellViT assign over all distances (A-Q, B-P) and then
    drop B-P, beyond 12 px: one pair. Gated assignment keeps both pairs within 12 px."""
    x = (11.5 ** 2 - 12.5 ** 2 + 12.5 ** 2) / (2 * 12.5)
    y = np.sqrt(11.5 ** 2 - x ** 2)
    true_xy = np.array([[0.0, 0.0], [12.5, 0.0]])
    pred_xy = np.array([[x, y], [1.0, 0.0]])
    d = np.linalg.norm(true_xy[:, None] - pred_xy[None], axis=-1)
    assert np.allclose(d, [[11.5, 1.0], [12.5, 11.5]])
    ti, pi = match_centroids(true_xy, pred_xy, 12, "hovernet")
    assert list(zip(ti.tolist(), pi.tolist())) == [(0, 1)]
    ti, pi = match_centroids(true_xy, pred_xy, 12, "gated")
    assert sorted(zip(ti.tolist(), pi.tolist())) == [(0, 0), (1, 1)]
    h = detection_scores([(true_xy, None)], [(pred_xy, None)])
    g = detection_scores([(true_xy, None)], [(pred_xy, None)], pairing="gated")
    assert (h["pairing"], h["tp"], h["f1"]) == ("hovernet", 1, 0.5) and (g["tp"], g["f1"]) == (2, 1.0)
    with pytest.raises(ValueError, match="pairing"):
        match_centroids(true_xy, pred_xy, 12, "greedy")


def test_dead_nuclei_are_unlabelled_for_type_scores_as_in_non_exhaustive_mode():
    """PanNuke's Dead (4) is not a scored class: a Neoplastic prediction on a Dead nucleus is a
    detection, not a Neoplastic false positive; per-class precision and recall as CellViT's."""
    txy = np.array([[0.0, 0.0], [50.0, 0.0], [100.0, 0.0], [150.0, 0.0]])
    pxy = txy + 1
    tcl, pcl = np.array([1, 1, 4, 2]), np.array([1, 2, 1, 2])
    d = detection_scores([(txy, tcl)], [(pxy, pcl)], classes=[1, 2, 3, 5])
    assert d["tp"] == 4 and d["f1"] == 1.0
    # Neoplastic: tp 1, fp 0 (the Dead pair ignored), fn 1 -> F1 2/(2+2), precision 1, recall 1/3
    assert d["f1_per_class"][1] == pytest.approx(0.5)
    assert d["precision_per_class"][1] == pytest.approx(1.0) and d["recall_per_class"][1] == pytest.approx(1 / 3)
    # Inflammatory: tp 1, fp 1 -> F1 2/(2+2), precision 1/3, recall 1
    assert d["precision_per_class"][2] == pytest.approx(1 / 3) and d["recall_per_class"][2] == pytest.approx(1.0)


def test_per_class_f1_hand_worked():
    # paired (true, pred) classes: (1,1) (1,1) (1,2) (2,1) (2,2); unpaired true: 1; unpaired pred: 2, 1
    paired = [(1, 1), (1, 1), (1, 2), (2, 1), (2, 2)]
    txy = [[30.0 * i, 0.0] for i in range(5)] + [[0.0, 300.0]]
    pxy = [[30.0 * i + 1, 0.0] for i in range(5)] + [[300.0, 0.0], [300.0, 300.0]]
    tcl = [p[0] for p in paired] + [1]
    pcl = [p[1] for p in paired] + [2, 1]
    d = detection_scores([(np.array(txy[:3]), np.array(tcl[:3])), (np.array(txy[3:]), np.array(tcl[3:]))],
                         [(np.array(pxy[:3]), np.array(pcl[:3])), (np.array(pxy[3:]), np.array(pcl[3:]))])
    assert (d["tp"], d["fp"], d["fn"]) == (5, 2, 1)
    assert d["f1"] == pytest.approx(10 / 13)
    assert d["precision"] == pytest.approx(5 / 7) and d["recall"] == pytest.approx(5 / 6)
    assert d["f1_per_class"][1] == pytest.approx(4 / 10)    # 2tp / (2tp + 2fp + 2fn + fp_d + fn_d) = 4/(4+2+2+1+1)
    assert d["f1_per_class"][2] == pytest.approx(2 / 7)     # 2/(2+2+2+1+0)
    c = d["classification"]
    assert c["accuracy"] == pytest.approx(3 / 5)
    assert c["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_centroids_of_instances():
    inst = np.zeros((10, 10), np.int32)
    inst[0:2, 0:4] = 5
    ids, xy = centroids(inst)
    assert ids.tolist() == [5] and xy.tolist() == [[1.5, 0.5]]
