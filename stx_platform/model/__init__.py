"""CellViT model (ViT encoder + UNETR-like decoder, three nuclei branches + tissue head), its
losses with the Unknown-class exclusion, and loading of official CellViT checkpoints."""

from stx_platform.model.cellvit import (
    BRANCHES,
    CONFIGS,
    CellViT,
    CellViTConfig,
    LoadReport,
    ViTEncoder,
    build_model,
    count_parameters,
    freeze_encoder,
    get_config,
    load_checkpoint,
)
from stx_platform.model.losses import (
    DEFAULT_WEIGHTS,
    IGNORE_INDEX,
    CellViTLoss,
    cross_entropy_loss,
    dice_loss,
    focal_tversky_loss,
    gradient_kernels,
    hv_gradients,
    mse_loss,
    msge_loss,
    one_hot,
)

__all__ = [
    "BRANCHES",
    "CONFIGS",
    "DEFAULT_WEIGHTS",
    "IGNORE_INDEX",
    "CellViT",
    "CellViTConfig",
    "CellViTLoss",
    "LoadReport",
    "ViTEncoder",
    "build_model",
    "count_parameters",
    "cross_entropy_loss",
    "dice_loss",
    "focal_tversky_loss",
    "freeze_encoder",
    "get_config",
    "gradient_kernels",
    "hv_gradients",
    "load_checkpoint",
    "mse_loss",
    "msge_loss",
    "one_hot",
]
