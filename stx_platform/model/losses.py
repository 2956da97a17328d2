"""CellViT's training losses with the paper's weights, plus the Unknown-class exclusion.

Conventions
-----------
- Targets: ``{"binary": (B,H,W) long 0/1, "hv": (B,2,H,W) float (channel 0 horizontal = x,
  channel 1 vertical = y, each in [-1, 1] inside nuclei, 0 outside), "type": (B,H,W) long,
  "tissue": (B,) long}``.
- **Unknown nuclei**: the type target holds class indices 0..n_classes-1 (0 = background, the
  PanNuke order of :data:`stx_platform.taxonomy.PANNUKE_TYPE_ORDER`) and :data:`IGNORE_INDEX`
  (-1) on the pixels of Unknown nuclei. Those pixels are left out of all three type-branch terms
  (CE, Dice, FocalTversky) but are ordinary nucleus pixels (binary 1, HV offsets) in the binary
  and HV terms. ``tissue`` may also hold -1 (no tissue label); the tissue term is skipped when
  ``targets`` has no ``tissue`` key.
- Probabilities are ``softmax(logits)`` over the class channel, applied exactly once (the
  reference applies it twice before FocalTversky; not copied).

Terms (weights: :data:`DEFAULT_WEIGHTS`, the CellViT paper configs)
----------------------------------------------------------------------
- Dice (HoVer-Net form): per channel c over all batch pixels,
  ``1 - (2 sum p_c t_c + s) / (sum p_c + sum t_c + s)`` with s = 1e-3, **summed** over the
  channels (background included).
- FocalTversky (Abraham & Khan 2019): ``TI = (TP + s) / (TP + alpha FN + beta FP + s)`` with
  TP = sum p t, FN = sum t (1 - p), FP = sum (1 - t) p, s = 1e-6, loss ``(1 - TI) ** gamma``;
  alpha 0.7, beta 0.3, gamma 4/3. Binary branch: one TI pooled over both channels (one-hot
  flattened); type branch (multi-class): one TI per class, losses **summed** over classes.
- CE: mean over the counted pixels of ``-log softmax(logits)[target]``.
- MSE: mean over all pixels and both HV channels of ``(pred - target)^2``.
- MSGE: see :func:`msge_loss`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

#: Type-target value of the pixels of Unknown nuclei (and of tissue targets without a label).
IGNORE_INDEX = -1

#: Paper weights (CellViT configs): binary FT 1 + Dice 1; HV MSE 2.5 + MSGE 8; type CE 0.5 +
#: Dice 0.2 + FT 0.5; tissue CE 0.1.
DEFAULT_WEIGHTS: dict[str, float] = {
    "binary_focal_tversky": 1.0,
    "binary_dice": 1.0,
    "hv_mse": 2.5,
    "hv_msge": 8.0,
    "type_ce": 0.5,
    "type_dice": 0.2,
    "type_focal_tversky": 0.5,
    "tissue_ce": 0.1,
}


def one_hot(target: torch.Tensor, n_classes: int, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,H,W) class indices -> ((B,C,H,W) float one-hot, (B,H,W) bool valid). Ignored pixels get
    an all-zero one-hot row and ``valid`` False."""
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target))
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise ValueError(f"target values must lie in 0..{n_classes - 1} or be {ignore_index}, found {int(t.min())}..{int(t.max())}")
    oh = F.one_hot(t.long(), n_classes).permute(0, 3, 1, 2).to(torch.float32)
    return oh * valid.unsqueeze(1), valid


def _masked(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if valid is None:
        return probs, target
    m = valid.unsqueeze(1).to(probs.dtype)
    return probs * m, target * m


def dice_loss(probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, smooth: float = 1e-3) -> torch.Tensor:
    """Soft Dice, HoVer-Net form: per channel over batch and pixels, summed over channels.
    ``probs``/``target`` (B,C,H,W); pixels with ``valid`` (B,H,W) False do not count."""
    p, t = _masked(probs, target, valid)
    dims = (0, 2, 3)
    inter = (p * t).sum(dims)
    loss = 1.0 - (2.0 * inter + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    return loss.sum()


def focal_tversky_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 4 / 3,
    smooth: float = 1e-6,
    per_class: bool = False,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal Tversky loss ``(1 - TI)^gamma``, ``TI = (TP+s)/(TP + alpha FN + beta FP + s)``.

    ``per_class=False``: one TI pooled over all channels and pixels (CellViT's binary form);
    ``per_class=True``: one TI per channel, losses summed (optionally weighted) over channels.
    Pixels with ``valid`` False do not count (neither as TP, FP nor FN)."""
    p, t = _masked(probs, target, valid)
    dims = (0, 2, 3) if per_class else (0, 1, 2, 3)
    tp = (p * t).sum(dims)
    fn = (t * (1 - p)).sum(dims)
    fp = ((1 - t) * p).sum(dims)
    ti = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    loss = (1 - ti).clamp_min(0) ** gamma
    if per_class and class_weights is not None:
        loss = loss * class_weights.to(loss)
    return loss.sum()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross entropy over the pixels (or samples) whose target is not ``ignore_index``
    (weighted mean with per-class ``weight``); 0 when none is left (instead of NaN)."""
    target = target.long()
    valid = target != ignore_index
    w = weight.to(logits.dtype) if weight is not None else None
    total = F.cross_entropy(logits, target, weight=w, ignore_index=ignore_index, reduction="sum")
    n = valid.sum().to(total.dtype) if w is None else w[target[valid]].sum()
    return total / n.clamp_min(1)


def median_frequency_weights(counts: Mapping[str, int], order: tuple[str, ...]) -> list[float]:
    """Per-class loss weights by median-frequency balancing (Eigen & Fergus 2015): for each class of
    ``order`` with a count, median(counts) / count; 1 for the others (background, classes absent)."""
    present = {c: float(n) for c, n in counts.items() if c in order[1:] and n > 0}
    if not present:
        return [1.0] * len(order)
    med = statistics.median(present.values())
    return [med / present[c] if c in present else 1.0 for c in order]


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels and channels."""
    return ((pred - target) ** 2).mean()


def gradient_kernels(size: int = 5, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """HoVer-Net's ``size`` x ``size`` "Sobel" kernels: k_x[i, j] = dx / (dx^2 + dy^2) and
    k_y[i, j] = dy / (dx^2 + dy^2), dx = j - size//2 (column, x), dy = i - size//2 (row, y), centre 0.
    Correlating a ramp ``a*x`` with k_x gives ``a * sum dx^2/(dx^2+dy^2)`` = 12a for size 5."""
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    r = torch.arange(size, device=device, dtype=dtype) - size // 2
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    d2 = dx * dx + dy * dy
    d2[size // 2, size // 2] = 1.0
    return dx / d2, dy / d2


def hv_gradients(hv: torch.Tensor, size: int = 5) -> torch.Tensor:
    """(B,2,H,W) -> (B,2,H,W): channel 0 (horizontal map) differentiated along x, channel 1
    (vertical map) along y (zero padding)."""
    kx, ky = gradient_kernels(size, hv.device, hv.dtype)
    w = torch.stack([kx, ky]).unsqueeze(1)  # (2,1,k,k): depthwise, one kernel per channel
    return F.conv2d(hv, w, padding=size // 2, groups=2)


def msge_loss(pred: torch.Tensor, target: torch.Tensor, focus: torch.Tensor, size: int = 5) -> torch.Tensor:
    """Mean squared gradient error of HV maps inside nuclei (HoVer-Net, Graham et al. 2019).

    ``sum focus * (grad(pred) - grad(target))^2 / (2 * sum focus)`` over both channels, where
    ``focus`` (B,H,W) is the nucleus mask (binary target) and grad uses :func:`hv_gradients`.

    Orientation: this follows the HoVer-Net *paper's* formula — each HV channel is differentiated
    along its own axis (horizontal map along x, vertical map along y). The reference code bases
    (HoVer-Net, CellViT) differentiate each channel along the other axis, a kernel-orientation
    quirk; that variant is deliberately not reproduced.
    """
    f = focus.to(pred.dtype).unsqueeze(1).expand_as(pred)
    diff = hv_gradients(pred, size) - hv_gradients(target, size)
    return (f * diff * diff).sum() / (f.sum() + 1e-8)


class CellViTLoss(nn.Module):
    """Weighted sum of the CellViT terms. ``forward(outputs, targets)`` -> ``(total, components)``
    where components maps each name of :data:`DEFAULT_WEIGHTS` to its *unweighted* value
    (``tissue_ce`` only when ``targets`` has ``tissue``); ``total = sum weight * component``.

    ``weights`` overrides entries of :data:`DEFAULT_WEIGHTS` (unknown names raise); a term with
    weight 0 is still reported. FocalTversky parameters: ``alpha``, ``beta``, ``gamma``."""

    def __init__(self, weights: Mapping[str, float] | None = None, alpha: float = 0.7, beta: float = 0.3, gamma: float = 4 / 3,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)} (expected some of {sorted(DEFAULT_WEIGHTS)})")
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weights or {}).items()}}
        self.ft = {"alpha": alpha, "beta": beta, "gamma": gamma}
        self.class_weights = class_weights

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c: dict[str, torch.Tensor] = {}
        binary = targets["binary"].long()

        bin_logits = outputs["nuclei_binary_map"]
        bin_prob = bin_logits.softmax(1)
        bin_oh, _ = one_hot(binary, 2)
        c["binary_focal_tversky"] = focal_tversky_loss(bin_prob, bin_oh, **self.ft)
        c["binary_dice"] = dice_loss(bin_prob, bin_oh)

        hv_pred, hv_true = outputs["hv_map"], targets["hv"].to(outputs["hv_map"].dtype)
        c["hv_mse"] = mse_loss(hv_pred, hv_true)
        c["hv_msge"] = msge_loss(hv_pred, hv_true, binary)

        type_logits = outputs["nuclei_type_map"]
        type_t = targets["type"].long()
        type_prob = type_logits.softmax(1)
        type_oh, valid = one_hot(type_t, type_logits.shape[1])
        c["type_ce"] = cross_entropy_loss(type_logits, type_t, weight=self.class_weights)
        c["type_dice"] = dice_loss(type_prob, type_oh, valid)
        c["type_focal_tversky"] = focal_tversky_loss(type_prob, type_oh, valid, per_class=True,
                                                     class_weights=self.class_weights, **self.ft)

        if "tissue" in targets and "tissue_types" in outputs:
            c["tissue_ce"] = cross_entropy_loss(outputs["tissue_types"], targets["tissue"].long())

        total = sum(self.weights[k] * v for k, v in c.items())
        return total, c
