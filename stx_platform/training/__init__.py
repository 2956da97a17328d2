"""Training: streamed ingest (patch shards + a label set -> augmented CellViT targets), the Ray
Train loop, per-epoch validation on a PanNuke fold, checkpoints. ``run.run_training`` (the Ray
layer) is imported from its module so that using the pure parts does not import Ray Train."""

from stx_platform.training.augmentation import AugmentConfig, augment, stain_jitter
from stx_platform.training.checkpoint import (
    TrainedModel,
    find_checkpoint,
    load_trained_model,
    save_checkpoint,
)
from stx_platform.training.config import PRESETS, TrainConfig
from stx_platform.training.ingest import (
    PANNUKE_TISSUES,
    ShardUnitReader,
    TransformBatch,
    instance_classes,
    load_labels,
    make_sample,
    tissue_index,
    training_dataset,
    transform_batch,
)
from stx_platform.training.validate import Evaluation, evaluate

__all__ = ["PANNUKE_TISSUES", "PRESETS", "AugmentConfig", "Evaluation", "ShardUnitReader", "TrainConfig",
           "TrainedModel", "TransformBatch", "augment", "evaluate", "find_checkpoint", "instance_classes",
           "load_labels", "load_trained_model", "make_sample", "save_checkpoint", "stain_jitter", "tissue_index",
           "training_dataset", "transform_batch"]
