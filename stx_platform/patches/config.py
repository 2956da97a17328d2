"""Patch-cutting settings (PanNuke-like defaults) and a stable hash that names a patch build.

Patches do not depend on the label config: only these fields decide which pixels and which
instance maps a build holds, so ``config_hash()`` together with the slide names the artifact.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PatchConfig(BaseModel):
    """How a slide is cut into patches. Defaults follow PanNuke: 256 x 256 px at ~0.25 um/px."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(256, ge=16, le=4096, description="patch side in pixels, at the target resolution")
    mpp: float = Field(0.25, gt=0, le=100, description="target um per patch pixel (slides at another pixel "
                                                       "size are resampled)")
    stride: int = Field(256, description="step between patch origins in patch pixels; overlap = size - stride "
                                         "(1 <= stride <= size)")
    min_nuclei: int = Field(1, ge=0, description="patches with fewer nucleus instances are skipped")
    min_tissue: float = Field(0.3, ge=0, le=1, description="fewest fraction of the patch over tissue")
    image_format: Literal["png", "jpeg", "qoi"] = Field(
        "png", description="patch image encoding: png (lossless), qoi (lossless, faster to cut, a little larger) "
                           "or jpeg (lossy, ~5x smaller, fastest); schema.py has the measurements behind the default")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality when image_format is 'jpeg'")

    @model_validator(mode="after")
    def _check_stride(self) -> PatchConfig:
        if not 1 <= self.stride <= self.size:
            raise ValueError(f"stride must be between 1 and size ({self.size}), got {self.stride}: "
                             "overlap = size - stride cannot be negative or a whole patch")
        return self

    @property
    def overlap(self) -> int:
        return self.size - self.stride

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """Stable 12-hex-digit name of these settings (sha256 of the sorted JSON dump)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]
