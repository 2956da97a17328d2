"""Quality gates of a build: a slide that reads but cannot give good training data fails with a
named reason instead of being counted as done.

Each gate checks a physical or biological expectation, not a property of one data set:

- ``nucleus_area_um2``: the median nucleus area in um^2 (nucleus polygons times the pixel size
  squared). Human nuclei in sections measure roughly 20-60 um^2 (Xenium runs: a median of 24-42
  um^2); outside 10-150 the pixel size is wrong (HEST #106: TIFF tags 10x off), however good
  the polygons look in pixels.
- ``max_empty_share``: cells with no transcript at all. A few percent happen at tissue edges;
  more means the expression and the nuclei do not belong together (ids, assignment or crop).
- ``min_patches``: a slide that gives no patch adds nothing to training (too little tissue, or
  a pixel size that shrinks it to nothing).
- an organ outside the known list is a warning: only organ-agnostic markers vote for it.

Every threshold is a field of :class:`QualityConfig`, set on the command line as
``--set quality.<field>=<value>``.
"""

from __future__ import annotations

import numpy as np
import shapely
from pydantic import BaseModel, ConfigDict, Field

from stx_platform.organs import ORGANS, canonical_organ


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_nucleus_area_um2: float = Field(10.0, ge=0, description="median nucleus area below this fails the slide")
    max_nucleus_area_um2: float = Field(150.0, gt=0, description="median nucleus area above this fails the slide")
    max_empty_share: float = Field(0.25, ge=0, le=1, description="share of cells without any transcript above "
                                                                 "this fails the slide")
    min_patches: int = Field(1, ge=0, description="fewer patches than this fails the slide")


class QualityError(ValueError):
    """A slide failed a quality gate; ``gate`` names the :class:`QualityConfig` field to change."""

    def __init__(self, gate: str, message: str):
        self.gate = gate
        super().__init__(f"quality gate {gate}: {message} (override with --set quality.{gate}=...)")


def median_nucleus_area_um2(nuclei: np.ndarray, mpp: float) -> float:
    return float(np.median(shapely.area(nuclei))) * mpp * mpp if len(nuclei) else float("nan")


def check_sample(sample, q: QualityConfig) -> list[str]:
    """Raise :class:`QualityError` for a read sample that fails a gate; return warnings."""
    area = median_nucleus_area_um2(sample.nuclei, sample.mpp)
    if not q.min_nucleus_area_um2 <= area <= q.max_nucleus_area_um2:
        raise QualityError("min_nucleus_area_um2" if area < q.min_nucleus_area_um2 else "max_nucleus_area_um2",
                           f"median nucleus area {area:.3g} um^2 at {sample.mpp:g} um/px is outside "
                           f"{q.min_nucleus_area_um2:g}-{q.max_nucleus_area_um2:g} um^2: the pixel size is "
                           "likely wrong")
    counts = np.asarray(sample.expression.X.sum(axis=1)).ravel()
    empty = float((counts == 0).mean()) if len(counts) else 1.0
    if empty > q.max_empty_share:
        raise QualityError("max_empty_share", f"{empty:.0%} of {len(counts):,} cells have no transcript (at most "
                                              f"{q.max_empty_share:.0%} allowed): expression and nuclei do not match")
    warnings = []
    if canonical_organ(sample.organ) is None:
        warnings.append(f"organ {sample.organ!r} is not one of {', '.join(ORGANS)}: only organ-agnostic markers "
                        "voted")
    return warnings


def check_patches(patches: int, q: QualityConfig) -> None:
    if patches < q.min_patches:
        raise QualityError("min_patches", f"{patches} patch(es), at least {q.min_patches} needed")
