"""Training: streamed ingest (patch shards + a label set -> augmented CellViT targets), the Ray
Train loop, per-epoch validation on a PanNuke fold, checkpoints. ``run.run_training`` (the Ray
layer) is imported from its module so that using the pure parts does not import Ray Train.

The names below load on first use (PEP 562): a Ray Data worker that needs only the ingest does
not pay for torch, the model and validation when it imports ``stx_platform.training.ingest``."""

from __future__ import annotations

import importlib

_WHERE = {
    "augmentation": ("AugmentConfig", "augment", "stain_jitter"),
    "checkpoint": ("TrainedModel", "find_checkpoint", "load_trained_model", "save_checkpoint"),
    "config": ("PRESETS", "TrainConfig"),
    "ingest": ("PANNUKE_TISSUES", "ShardUnitReader", "TransformBatch", "instance_classes", "load_labels",
               "make_sample", "tissue_index", "training_dataset", "transform_batch"),
    "validate": ("Evaluation", "evaluate"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
