"""The model stage end to end on a synthetic PanNuke fold: ground truth -> targets ->
post-processing scores PQ near 1; the tiny CellViT learns on those patches on CPU."""

import numpy as np
import torch

from stx_platform.metrics import pannuke_scores
from stx_platform.model import CellViTLoss, build_model
from stx_platform.postprocess import instances_from_maps
from stx_platform.sources.pannuke import PanNukeFold
from stx_platform.targets import targets
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER


def _batch(fold, idx):
    items = [fold[i] for i in idx]
    t = [targets(it.instances, it.classes) for it in items]
    x = torch.from_numpy(np.stack([it.image for it in items])).permute(0, 3, 1, 2).float() / 255.0
    y = {"binary": torch.from_numpy(np.stack([d["binary"] for d in t])).long(),
         "hv": torch.from_numpy(np.stack([d["hv"] for d in t])),
         "type": torch.from_numpy(np.stack([d["type"] for d in t]))}
    return items, t, (x - 0.5) / 0.5, y


def test_perfect_maps_post_process_back_to_the_ground_truth(pannuke_dir):
    fold = PanNukeFold(pannuke_dir)
    items, t, _, _ = _batch(fold, range(len(fold)))
    preds, pred_cls, true_cls = [], [], []
    for it, d in zip(items, t):
        onehot = np.eye(len(PANNUKE_TYPE_ORDER), dtype=np.float32)[np.maximum(d["type"], 0)].transpose(2, 0, 1)
        inst, table = instances_from_maps(d["binary"].astype(np.float32), d["hv"], onehot)
        preds.append(inst)
        pred_cls.append(dict(zip(table["id"], table["class"])))
        true_cls.append({k: PANNUKE_TYPE_ORDER.index(v) for k, v in it.classes.items()})
    s = pannuke_scores([it.instances for it in items], true_cls, preds, pred_cls, [it.tissue for it in items])
    assert s["bPQ"] > 0.85 and s["mPQ"] > 0.8 and s["detection"]["f1"] > 0.9, s
    assert s["detection"]["classification"]["accuracy"] > 0.97


def test_tiny_cellvit_loss_falls_on_synthetic_pannuke_patches(pannuke_dir):
    torch.manual_seed(0)
    fold = PanNukeFold(pannuke_dir)
    _, _, x, y = _batch(fold, range(2))
    model = build_model("tiny", drop_path=0.0, attn_drop=0.0).train()
    loss_fn = CellViTLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.85, 0.95), weight_decay=1e-4)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        total, _ = loss_fn(model(x), y)
        total.backward()
        opt.step()
        losses.append(float(total))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
