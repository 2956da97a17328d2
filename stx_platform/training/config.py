"""Training settings: CellViT's PanNuke recipe as the GPU default, a tiny CPU recipe for tests and
demos; loadable from the ``train`` section of a YAML file and overridable by ``key=value``."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stx_platform.config_io import apply_overrides, deep_merge, read_section
from stx_platform.model import CONFIGS, DEFAULT_WEIGHTS
from stx_platform.training.augmentation import AugmentConfig

#: validation metrics a run can be judged by (keys of the flat validation dict)
METRICS: tuple[str, ...] = ("mPQ", "bPQ", "dice", "jaccard", "f1", "precision", "recall", "macro_f1", "accuracy")


class TrainConfig(BaseModel):
    """One training run. Defaults are CellViT's PanNuke recipe (Hörst et al. 2024, their configs):
    AdamW lr 3e-4, betas (0.85, 0.95), weight decay 1e-4, 130 epochs, batch 16, encoder frozen for
    25 epochs, exponential decay with gamma 0.95 (their config says 0.85; their scheduler code
    effectively applies 0.95), drop path and attention dropout 0.1, fp16 on GPU."""

    model_config = ConfigDict(extra="forbid")
    preset: str = Field("cellvit", description="name of the preset these settings started from")
    model: str = Field("vit256", description=f"CellViT architecture: one of {sorted(CONFIGS)}")
    pretrained: str | None = Field(None, description="weights to start from (an official CellViT/HIPT checkpoint "
                                                     "URL; loaded with weights_only=True)")
    drop_path: float = Field(0.1, ge=0, lt=1)
    attn_drop: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(130, ge=1)
    batch_size: int = Field(16, ge=1, description="per training worker")
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.85, 0.95)
    weight_decay: float = Field(1e-4, ge=0)
    lr_gamma: float = Field(0.95, gt=0, le=1, description="exponential decay of the lr per epoch")
    freeze_encoder_epochs: int = Field(25, ge=0, description="epochs with the ViT encoder frozen (warm-up)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    class_balance: bool = Field(False, description="weight the type loss's classes by median-frequency balancing "
                                                     "of the training labels (CellViT samples by class instead)")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="validate and keep an exponential moving "
                                    "average of the weights with this decay per step (None: the weights as "
                                    "trained, CellViT's recipe)")
    amp: bool = Field(True, description="mixed precision: fp16 autocast + grad scaling on GPUs, bf16 autocast on "
                                        "CPUs with native bf16 (AVX512-BF16, AMX), fp32 on other CPUs")
    samples_per_epoch: int | None = Field(None, ge=1, description="patches per epoch (None: the whole dataset)")
    augment: bool = True
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig,
                                        description="augmentation strengths, e.g. augmentation.stain_scale=0.2")
    seed: int = 0
    # scale
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one GPU each when use_gpu)")
    use_gpu: bool | None = Field(None, description="None: use GPUs when the Ray cluster has any")
    cpus_per_worker: float = Field(0.5, gt=0, description="fractional on small machines so Ray Data keeps CPUs")
    torch_threads: int | None = Field(None, ge=0, description="CPU training: torch threads per worker (None: the "
                                                              "worker's CPUs, as Ray sets them; 0: every CPU of the "
                                                              "node, which a light ingest leaves mostly idle)")
    ingest_cpus: float = Field(0.5, gt=0, description="CPUs per Ray Data transform actor")
    ingest_actors: tuple[int, int] | None = Field(None, description="min/max Ray Data transform actors (None: "
                                                  "sized from the train workers, see ingest_pool)")
    gpu_images_per_s: float = Field(150.0, gt=0, description="images/s one GPU trains on: sizes the ingest on GPUs")
    ingest_per_core: float | None = Field(None, gt=0, description="samples/s one CPU core of ingest makes (None: "
                                          "the figure measured for this augmentation, INGEST_PER_CORE)")
    shuffle_buffer: int = Field(64, ge=0, description="local shuffle buffer of iter_torch_batches (rows)")
    # validation, checkpoints
    val_images: int | None = Field(None, ge=1, description="first N images of the validation fold (None: all)")
    val_batch_size: int = Field(8, ge=1)
    overlays: int = Field(6, ge=0, description="validation images drawn into the overlay picture")
    metric: Literal[METRICS] = Field("mPQ", description="validation metric that ranks checkpoints")  # type: ignore[valid-type]
    keep_checkpoints: int = Field(3, ge=1)
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.model not in CONFIGS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {sorted(CONFIGS)}")
        unknown = set(self.loss_weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; expected some of {sorted(DEFAULT_WEIGHTS)}")
        if self.ingest_actors is not None and not 1 <= self.ingest_actors[0] <= self.ingest_actors[1]:
            raise ValueError(f"ingest_actors must be (min, max) with 1 <= min <= max, got {self.ingest_actors}")
        return self

    def ingest_pool(self, use_gpu: bool) -> tuple[int, int]:
        """Min/max Ray Data transform actors: ``ingest_actors`` when set. Else, on CPUs, (1, 2)
        (training, not the ingest, is the bottleneck there); on GPUs, the minimum makes
        ``gpu_images_per_s`` per train worker at the measured samples/s per core of this
        augmentation with ``ingest_cpus`` per actor, and the maximum twice that (slow shards,
        augmentation spikes): 4 GPUs with CellViT's augmentation, (3, 6) x 0.5 CPU."""
        if self.ingest_actors is not None:
            return tuple(self.ingest_actors)
        if not use_gpu:
            return (1, 2)
        per_core = self.ingest_per_core or INGEST_PER_CORE[
            "albumentations" if self.augment and self.augmentation.quality_ops() else "plain"]
        lo = max(1, math.ceil(self.num_workers * self.gpu_images_per_s / per_core / self.ingest_cpus - 1e-9))
        return (lo, 2 * lo)

    @classmethod
    def preset_config(cls, name: str) -> TrainConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown training preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls.model_validate({**PRESETS[name], "preset": name})

    @classmethod
    def load(cls, url: str | None = None, overrides: list[str] | tuple[str, ...] = (),
             preset: str | None = None) -> TrainConfig:
        """A preset (``cellvit`` unless the file or ``preset`` names another), then the ``train``
        section of a YAML file, then ``key=value`` overrides."""
        data = apply_overrides(read_section(url, "train"), overrides)
        name = preset or data.pop("preset", None) or "cellvit"
        data.pop("preset", None)
        return cls.model_validate({**deep_merge(cls.preset_config(name).model_dump(), data), "preset": name})


#: Training ingest, samples/s per CPU core (`python bench/ingest.py`, one thread, synthetic
#: patches of 18.5 nuclei): with CellViT's albumentations ops (the cellvit preset) 429, with the
#: geometric and colour augmentation only 1,358 (measured on a loaded 2-core machine; idle, the
#: plain figure is 1,290-1,374 in docs/scaling.md).
INGEST_PER_CORE: dict[str, float] = {"albumentations": 429.0, "plain": 1290.0}

#: named starting points; ``cellvit`` is the paper recipe for GPUs, ``tiny`` runs on a laptop CPU
#: in about a minute per epoch (0.68M parameters, 2 epochs of 192 patches, 32 validation images);
#: ``cpu`` trains enough to learn on 2 cores: the ``small`` CellViT (tiny's decoder, an encoder twice
#: as wide), every patch each epoch, 6 epochs, batch 2, lr 1e-3, torch on every core, bf16 autocast
#: where the CPU has it, class-balanced type loss, a weight average (each lever measured on a
#: held-out organ in docs/experiments.md). ``cellvit`` adds CellViT's albumentations ops.
PRESETS: dict[str, dict] = {
    "cellvit": {"augmentation": {"p_downscale": 0.15, "p_blur": 0.2, "p_noise": 0.25, "p_zoom_blur": 0.1,
                                 "p_sized_crop": 0.1, "p_elastic": 0.2}},
    "tiny": {"model": "tiny", "epochs": 2, "batch_size": 4, "lr": 1e-3, "freeze_encoder_epochs": 0,
             "drop_path": 0.0, "attn_drop": 0.0, "amp": False, "samples_per_epoch": 192, "val_images": 32,
             "val_batch_size": 8, "overlays": 4, "shuffle_buffer": 32},
    "cpu": {"model": "small", "epochs": 6, "batch_size": 2, "lr": 1e-3, "freeze_encoder_epochs": 0,
            "drop_path": 0.0, "attn_drop": 0.0, "amp": True, "samples_per_epoch": None, "val_images": 64,
            "val_batch_size": 8, "overlays": 4, "shuffle_buffer": 32, "torch_threads": 0, "class_balance": True,
            "ema_decay": 0.995},
}

