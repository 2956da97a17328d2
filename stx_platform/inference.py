"""Model outputs for images: RGB uint8 in, per-pixel probability maps and nucleus instances out.

Shared by validation, ``stx evaluate`` and ``stx predict``, so every path applies the model the
same way: the training normalisation (``(x / 255 - 0.5) / 0.5``), eval mode, no gradients, fp16
autocast on CUDA when asked, softmax over the binary and type logits, HV maps as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stx_platform.postprocess import instances_from_maps


@dataclass
class Maps:
    """Per-image outputs (numpy, float32): ``binary`` (B, H, W) foreground probability, ``hv``
    (B, 2, H, W), ``type`` (B, C, H, W) class probabilities (index 0 background), ``tissue``
    (B, T) tissue probabilities."""

    binary: np.ndarray
    hv: np.ndarray
    type: np.ndarray
    tissue: np.ndarray

    def __len__(self) -> int:
        return len(self.binary)


def to_input(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """RGB uint8 (B, H, W, 3) -> the model's normalised float input (B, 3, H, W) on ``device``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images (B, H, W, 3), got shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    return x.mul_(2.0 / 255.0).sub_(1.0)


@torch.no_grad()
def predict_maps(model: torch.nn.Module, images: np.ndarray, batch_size: int = 8, amp: bool = True) -> Maps:
    """Run ``model`` (eval mode, its own device) over RGB uint8 images (B, H, W, 3), H and W multiples of 16."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"binary": [], "hv": [], "type": [], "tissue": []}
    try:
        for s in range(0, len(images), batch_size):
            x = to_input(images[s:s + batch_size], device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                out = model(x)
            parts["binary"].append(out["nuclei_binary_map"].float().softmax(1)[:, 1].cpu().numpy())
            parts["hv"].append(out["hv_map"].float().cpu().numpy())
            parts["type"].append(out["nuclei_type_map"].float().softmax(1).cpu().numpy())
            parts["tissue"].append(out["tissue_types"].float().softmax(1).cpu().numpy())
    finally:
        model.train(was_training)
    if not parts["binary"]:
        raise ValueError("no images to predict")
    return Maps(**{k: np.concatenate(v) for k, v in parts.items()})


def instances(maps: Maps, i: int, magnification: float = 40,
              class_names: Sequence[str] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """Nucleus instances of image ``i`` of ``maps`` (HoVer-Net post-processing; see
    :func:`stx_platform.postprocess.instances_from_maps`)."""
    return instances_from_maps(maps.binary[i], maps.hv[i], maps.type[i], magnification, class_names)
