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


def measure(sample) -> dict[str, float]:
    """The measurements the gates judge a read sample by (kept in its build record, so a later
    build can judge it again under other thresholds without reading it)."""
    counts = np.asarray(sample.expression.X.sum(axis=1)).ravel()
    return {"median_nucleus_area_um2": median_nucleus_area_um2(sample.nuclei, sample.mpp),
            "empty_share": float((counts == 0).mean()) if len(counts) else 1.0}


def check_values(q: QualityConfig, *, median_nucleus_area_um2: float | None = None, empty_share: float | None = None,
                 patches: int | None = None, mpp: float | None = None) -> None:
    """Raise :class:`QualityError` for the first gate the given measurements fail (None: not
    measured, not judged)."""
    area = median_nucleus_area_um2
    if area is not None and not q.min_nucleus_area_um2 <= area <= q.max_nucleus_area_um2:
        at = f" at {mpp:g} um/px" if mpp else ""
        raise QualityError("min_nucleus_area_um2" if area < q.min_nucleus_area_um2 else "max_nucleus_area_um2",
                           f"median nucleus area {area:.3g} um^2{at} is outside {q.min_nucleus_area_um2:g}-"
                           f"{q.max_nucleus_area_um2:g} um^2: the pixel size is likely wrong")
    if empty_share is not None and empty_share > q.max_empty_share:
        raise QualityError("max_empty_share", f"{empty_share:.0%} of the cells have no transcript (at most "
                                              f"{q.max_empty_share:.0%} allowed): expression and nuclei do not match")
    if patches is not None and patches < q.min_patches:
        raise QualityError("min_patches", f"{patches} patch(es), at least {q.min_patches} needed")


def check_sample(sample, q: QualityConfig) -> tuple[list[str], dict[str, float]]:
    """Raise :class:`QualityError` for a read sample that fails a gate; return its warnings and
    measurements (:func:`measure`)."""
    m = measure(sample)
    check_values(q, **m, mpp=sample.mpp)
    warnings = []
    if canonical_organ(sample.organ) is None:
        warnings.append(f"organ {sample.organ!r} is not one of {', '.join(ORGANS)}: only organ-agnostic markers "
                        "voted")
    return warnings, m


def check_patches(patches: int, q: QualityConfig) -> None:
    check_values(q, patches=patches)


def recheck(rec, q: QualityConfig):
    """A slide a previous build finished, judged by today's gates on the measurements its record
    holds: the record itself, or a failed copy naming the gate (its files stay; training skips it)."""
    from dataclasses import replace

    from stx_platform.build.manifest import FAILED

    try:
        check_values(q, median_nucleus_area_um2=rec.median_nucleus_area_um2, empty_share=rec.empty_share,
                     patches=rec.patches)
    except QualityError as e:
        return replace(rec, status=FAILED, gate=e.gate, error=f"QualityError: {e} (built earlier; judged again "
                                                                 "with this build's gates)")
    return rec
