"""Organ names, normalised: HEST metadata, PanNuke tissues, PanglaoDB organs and CellMarker
tissues all map to one key per organ (``breast``, ``colon``, ...), so a slide's organ can
select organ-specific markers whatever spelling its source uses."""

from __future__ import annotations

import re

#: The paper's ten organs (shared by HEST-1k and PanNuke) and held-out ones.
ORGANS: tuple[str, ...] = ("breast", "colon", "kidney", "liver", "lung", "ovary", "pancreas", "prostate", "skin",
                           "stomach", "thyroid", "uterus", "lymph_node")

_ALIASES = {
    "bowel": "colon", "colorectum": "colon", "colorectal": "colon", "large_intestine": "colon", "rectum": "colon",
    "gi_tract": "colon", "intestine": "colon",
    "mammary_gland": "breast", "mammary": "breast",
    "lungs": "lung", "pulmonary": "lung", "airway": "lung",
    "pancreatic": "pancreas", "ovarian": "ovary", "renal": "kidney", "hepatic": "liver",
    "epidermis": "skin", "dermis": "skin", "gastric": "stomach",
    "lymphoid": "lymph_node", "lymph": "lymph_node", "lymph_nodes": "lymph_node",
    "uterine": "uterus", "endometrium": "uterus", "cervix_uterine": "uterus",
    "bronchus": "lung", "bronchi": "lung", "bronchiole": "lung", "alveolus": "lung", "airway_epithelium": "lung",
    "fundic_gland": "stomach", "breast_tissue": "breast",
}


def canonical_organ(name: str | None) -> str | None:
    """The organ key for a name from any source, or None when it is not one of ``ORGANS``."""
    if not name:
        return None
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    key = _ALIASES.get(key, key)
    return key if key in ORGANS else None


def organ_from_metadata(*names) -> str | None:
    """The first organ named by any of ``names`` (whole value, else one of its words):
    ``"Ovarian_Cancer"`` -> ovary, ``"Human Prostate Adenocarcinoma (FFPE)"`` -> prostate."""
    for name in names:
        if not name:
            continue
        organ = canonical_organ(str(name))
        if organ:
            return organ
        words = [w for w in re.split(r"[^a-z]+", str(name).lower()) if w]
        for a, b in zip(words, words[1:] + [""]):
            organ = canonical_organ(f"{a}_{b}") if b else None
            organ = organ or canonical_organ(a)
            if organ:
                return organ
    return None


def experiment_organ(exp: dict) -> str | None:
    """The organ an ``experiment.xenium`` names (``panel_tissue_type`` is often "Tissue" or
    "Multi" on 5k panels; the region name then says it)."""
    return organ_from_metadata(exp.get("panel_tissue_type"), exp.get("region_name"), exp.get("run_name"),
                               exp.get("panel_name"))
