"""The training checkpoint: one directory per epoch, readable without Ray.

    model.pt        {"model": state dict, "model_config": CellViTConfig fields, "classes": type-map
                     class names (index 0 Background), "tissues": tissue-head names, "epoch": int};
                     with a weight average (``TrainConfig.ema_decay``) the averaged weights
    train_state.pt  {"optimizer", "scheduler", "scaler": state dicts, "epoch": int, and with a weight
                     average "trained": the optimiser's own weights, "ema_steps": int}  (resume only)
    metrics.json    the epoch's training and validation figures
    run.json        the training config, dataset URL and label set this model was trained on
    validation/     overlays.png, confusion.png (when validation ran)

Both ``.pt`` files hold tensors and plain containers only, so they load with
``torch.load(weights_only=True)``; nothing pickled is ever executed.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stx_platform import storage
from stx_platform.model import CellViT, CellViTConfig
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"
RUN_FILE = "run.json"
VALIDATION_DIR = "validation"
_EPOCH_DIR = re.compile(r"^checkpoint_epoch_(\d+)$")


def checkpoint_dir_name(epoch: int) -> str:
    """Directory name of the checkpoint written after (0-based) ``epoch``: sorts by epoch."""
    return f"checkpoint_epoch_{epoch + 1:04d}"


def _unwrap(model: torch.nn.Module) -> CellViT:
    return getattr(model, "module", model)


def _cpu_state(net: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def save_checkpoint(folder: str | Path, model: torch.nn.Module, epoch: int, *, optimizer=None, scheduler=None,
                    scaler=None, metrics: dict | None = None, run: dict | None = None,
                    ema=None) -> Path:
    """Write a checkpoint into the local ``folder`` (created). ``epoch`` is the 0-based epoch just
    finished; a resumed run starts at ``epoch + 1``. With ``ema`` (a ``torch.optim.swa_utils.
    AveragedModel`` of ``model``) ``model.pt`` holds the averaged weights, the ones to predict
    with, and the train state the optimiser's own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = _unwrap(model)
    kept = ema.module if ema is not None else net
    torch.save({"model": _cpu_state(kept), "model_config": net.config.model_dump(mode="json"),
                "classes": list(PANNUKE_TYPE_ORDER), "tissues": _tissues(), "epoch": int(epoch)},
               folder / MODEL_FILE)
    if optimizer is not None:
        extra = {"trained": _cpu_state(net), "ema_steps": int(ema.n_averaged)} if ema is not None else {}
        torch.save({"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None, "epoch": int(epoch), **extra},
                   folder / STATE_FILE)
    if metrics is not None:
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=1, default=float))
    if run is not None:
        (folder / RUN_FILE).write_text(json.dumps(run, indent=1, default=str))
    return folder


def _tissues() -> list[str]:
    from stx_platform.training.ingest import PANNUKE_TISSUES

    return list(PANNUKE_TISSUES)


def _torch_load(path: str | Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not loadable with weights_only=True (refusing to run pickled code): {e}") from e
    except (OSError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


@dataclass
class TrainedModel:
    """A model restored from a checkpoint, with what it was trained to predict."""

    model: CellViT
    classes: list[str]
    tissues: list[str]
    epoch: int
    source: str
    metrics: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)


def find_checkpoint(url: str) -> str:
    """The ``model.pt`` URL that ``url`` names: the file itself, a checkpoint directory holding
    one, or a training run / output folder (its newest ``checkpoint_epoch_*`` anywhere up to two
    levels down)."""
    if url.endswith(".pt"):
        if not storage.exists(url):
            raise FileNotFoundError(f"{url}: no such checkpoint file")
        return url
    direct = storage.join(url, MODEL_FILE)
    if storage.exists(direct):
        return direct
    if not storage.is_dir(url):
        raise FileNotFoundError(f"{url}: no checkpoint there (neither a {MODEL_FILE} nor a folder)")
    found: list[tuple[int, str]] = []
    fs, root = storage.filesystem(url)
    for depth in (1, 2, 3):
        for path in fs.glob(root.rstrip("/") + "/*" * depth):
            m = _EPOCH_DIR.match(os.path.basename(path.rstrip("/")))
            if m and fs.exists(path.rstrip("/") + "/" + MODEL_FILE):
                found.append((int(m.group(1)), path))
        if found:
            break
    if not found:
        raise FileNotFoundError(f"{url}: no {MODEL_FILE} and no checkpoint_epoch_* folder in it")
    _, best = max(found)
    rel = best[len(root.rstrip("/")) + 1:]
    return storage.join(url, rel, MODEL_FILE)


def load_trained_model(url: str, device: str | torch.device = "cpu") -> TrainedModel:
    """Restore a model from :func:`find_checkpoint` ``(url)`` (weights only), in eval mode."""
    path = find_checkpoint(url)
    with storage.local_copy(path) as local:
        obj = _torch_load(local)
    for key in ("model", "model_config"):
        if key not in obj:
            raise ValueError(f"{path}: not an stx training checkpoint (no {key!r}); for official CellViT "
                             "weights use TrainConfig.pretrained")
    model = CellViT(CellViTConfig(**obj["model_config"]))
    try:
        model.load_state_dict(obj["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the stored model config ({e})") from e
    folder = path.rsplit("/", 1)[0]
    extra = {}
    for name, key in ((METRICS_FILE, "metrics"), (RUN_FILE, "run")):
        u = storage.join(folder, name)
        extra[key] = storage.read_json(u) if storage.exists(u) else {}
    return TrainedModel(model.to(device).eval(), list(obj.get("classes", PANNUKE_TYPE_ORDER)),
                        list(obj.get("tissues", _tissues())), int(obj.get("epoch", -1)), path, **extra)


def load_train_state(folder: str | Path, model: torch.nn.Module, optimizer=None, scheduler=None, scaler=None,
                     ema=None) -> int:
    """Restore model (and, when given, optimiser, scheduler, scaler and weight average) from a
    local checkpoint folder; returns the epoch to continue from (the stored epoch + 1)."""
    folder = Path(folder)
    obj = _torch_load(folder / MODEL_FILE)
    epoch = int(obj.get("epoch", -1))
    st = _torch_load(folder / STATE_FILE) if (folder / STATE_FILE).exists() else {}
    # with a weight average model.pt holds the average; the optimiser continues from its own weights
    _unwrap(model).load_state_dict(st.get("trained", obj["model"]))
    if ema is not None:
        ema.module.load_state_dict(obj["model"])
        ema.n_averaged.fill_(int(st.get("ema_steps", 1)))
    if optimizer is not None and st:
        optimizer.load_state_dict(st["optimizer"])
        if scheduler is not None and st.get("scheduler") is not None:
            scheduler.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler") is not None:
            scaler.load_state_dict(st["scaler"])
    return epoch + 1
