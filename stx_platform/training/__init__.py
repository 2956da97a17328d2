"""Training-side data: patch shards + label tables -> augmented CellViT samples (stage 4 ingest)."""

from stx_platform.training.ingest import (
    PANNUKE_TISSUES,
    AugmentConfig,
    TransformBatch,
    augment,
    instance_classes,
    load_labels,
    make_sample,
    stain_jitter,
    tissue_index,
    training_dataset,
    transform_batch,
)

__all__ = ["PANNUKE_TISSUES", "AugmentConfig", "TransformBatch", "augment", "instance_classes", "load_labels",
           "make_sample", "stain_jitter", "tissue_index", "training_dataset", "transform_batch"]
