"""Training slides and held-out organs of one source (Table 2 evaluates organs no model saw)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stx_platform.organs import canonical_organ
from stx_platform.synth.organs import HELDOUT_ORGANS


@dataclass(frozen=True)
class OrganSplit:
    train: list[str]            # sample ids the ST model trains on
    heldout: list[str]          # sample ids it is evaluated on
    train_organs: list[str]
    heldout_organs: list[str]
    why: str                    # how the held-out organs were chosen


def _organ(slide: dict) -> str:
    return canonical_organ(slide.get("organ")) or str(slide.get("organ") or "unknown")


def organ_split(slides: Sequence[dict], heldout: Sequence[str] | None = None) -> OrganSplit:
    """Split done slides (manifest records with ``sample_id`` and ``organ``) by organ.

    ``heldout`` names the organs to hold out; by default those of the paper's held-out organs
    (thyroid, uterus, lymph node) present, else the last organ in name order. Refuses a split that
    leaves no organ on either side."""
    organs = sorted({_organ(s) for s in slides})
    if heldout:
        held = sorted({canonical_organ(o) or o for o in heldout})
        unknown = [o for o in held if o not in organs]
        if unknown:
            raise ValueError(f"held-out organ(s) {', '.join(unknown)} not among the built slides' organs "
                             f"({', '.join(organs)})")
        why = "chosen with --heldout"
    else:
        held = [o for o in organs if o in HELDOUT_ORGANS]
        why = "the paper's held-out organs present in the source"
        if not held and organs:
            held = organs[-1:]
            why = (f"none of the paper's held-out organs ({', '.join(HELDOUT_ORGANS)}) is in the source, so the "
                   "last organ in name order (choose with --heldout)")
    train_organs = [o for o in organs if o not in held]
    if not held or not train_organs:
        raise ValueError(f"organs {', '.join(organs) or 'none'}: a split needs at least one training and one held-out "
                         "organ (use a source with two organs or more)")
    ids = lambda keep: [s["sample_id"] for s in slides if _organ(s) in keep]  # noqa: E731
    return OrganSplit(ids(train_organs), ids(held), train_organs, held, why)
