"""Label-generation settings with the paper's defaults, loadable from YAML, overridable by
``key=value`` strings; a stable hash of the settings (and the marker database) names a label set."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from stx_platform.config_io import load_config


class MarkerSources(BaseModel):
    """Where the marker databases come from: the user's downloaded files, or (all None) the
    curated default embedded in the package."""

    model_config = ConfigDict(extra="forbid")
    panglaodb: str | None = Field(None, description="PanglaoDB markers TSV (e.g. PanglaoDB_markers_27_Mar_2020.tsv)")
    cellmarker: str | None = Field(None, description="CellMarker 2.0 table (Cell_marker_Human / _All; csv, csv.gz or xlsx)")
    cancersea: str | None = Field(None, description="folder of CancerSEA functional-state gene sets (*.txt)")

    @property
    def embedded(self) -> bool:
        return not (self.panglaodb or self.cellmarker or self.cancersea)


class LabelConfig(BaseModel):
    """Label generation: the paper's (Sec. 4.1, defaults of Sec. 5) with ``method: paper``, or the
    default ``improved`` method, which keeps its shape (clusters, DEGs, marker votes, hierarchy,
    Unknown) and fixes its failure modes on real slides; each fix is an option below (ignored by
    ``method: paper``), and :data:`ABLATIONS` switches them off one at a time."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["improved", "paper"] = Field("improved", description="'paper': the paper's rules exactly")
    # clustering
    resolution: float = Field(4.0, gt=0, description="Leiden resolution r")
    n_pcs: int = Field(50, ge=2, description="principal components for the kNN graph")
    n_neighbors: int = Field(15, ge=2, description="k of the kNN graph")
    seed: int = 0
    min_cells: int = Field(50, ge=10, description="fewest cells a slide needs to be clustered")
    # marker voting
    top_n: int = Field(10, ge=1, description="top-N DEGs that vote")
    rank_weighting: bool = Field(True, description="weight the l-th DEG's vote by (N - l)")
    tau_vote: float = Field(5.0, ge=0, description="fewest total votes before falling back / Unknown")
    # neoplastic refinement
    hierarchy: bool = Field(True, description="re-label Epithelial clusters as Neoplastic (off = 'w/o Hier')")
    top_m: int = Field(20, ge=1, description="top-M DEGs checked against the cancer gene set")
    tau_cancer: float = Field(0.25, ge=0, le=1, description="overlap ratio above which a cluster is Neoplastic")
    markers: MarkerSources = MarkerSources()
    # the improved method's fixes (method: improved)
    shared_lineages: bool = Field(True, description="organ votes include the organ-agnostic entries (immune "
                                  "cells, vessels, stroma, muscle, fat belong to every organ)")
    up_markers: bool = Field(True, description="the top-N voting genes are the cluster's most up-regulated "
                             "genes (z >= min_z) that the database knows, not its top-N genes of any kind")
    skip_state_genes: bool = Field(True, description="cell-cycle, interferon and stress genes (cell states of "
                                   "every lineage) never vote for a lineage (up_markers)")
    specificity: bool = Field(True, description="weight each voting gene by its class specificity (1 - "
                              "normalised entropy of its class shares) and skip genes below min_specificity "
                              "(up_markers)")
    min_specificity: float = Field(0.2, ge=0, le=1, description="least class specificity of a voting gene")
    effect_weights: bool = Field(True, description="weigh each voter by its z against the strongest voter's "
                                 "instead of by rank: a gene barely up (spill-over from neighbours) does not "
                                 "outvote the cluster's own marker (up_markers)")
    min_z: float = Field(2.0, ge=0, description="Wilcoxon z a gene needs to count as up-regulated in a cluster")
    cancer_test: bool = Field(True, description="Neoplastic when the top-M up-regulated genes hold more "
                              "cancer genes (beyond the organ's epithelial markers) than the panel gives by "
                              "chance (minimum-hypergeometric p < cancer_alpha)")
    cancer_within_epithelium: bool = Field(True, description="also test the cancer genes an epithelial cluster "
                                           "up-regulates against the slide's least cancer-like epithelium "
                                           "(tumour against normal epithelium), not only against all cells")
    cancer_alpha: float = Field(0.05, gt=0, lt=1, description="significance of the cancer-gene enrichment")
    lineage_filter: bool = Field(True, description="cancer genes that mark another lineage (more than half of "
                                 "their votes Inflammatory or Connective: CD45, CD31, CD20 from negative-selection "
                                 "entries, stromal programmes) are no tumour evidence in an epithelial cluster "
                                 "(epithelial contrast, tumour_coverage)")
    tumour_coverage: bool = Field(True, description="also Neoplastic when an epithelial cluster up-regulates "
                                  "(z >= min_z) at least min_tumour_share of the panel's tumour genes (cancer "
                                  "genes beyond the organ's epithelium that mark no other lineage and no cell "
                                  "state): the evidence a targeted panel too small for an enrichment test gives")
    min_tumour_share: float = Field(0.5, gt=0, le=1, description="share of the panel's tumour genes (tumour_coverage)")

    IMPROVED_FIELDS: ClassVar[tuple[str, ...]] = (
        "shared_lineages", "up_markers", "skip_state_genes", "specificity", "min_specificity", "effect_weights",
        "min_z", "cancer_test", "cancer_within_epithelium", "cancer_alpha", "lineage_filter", "tumour_coverage",
        "min_tumour_share")
    CLUSTER_FIELDS: ClassVar[tuple[str, ...]] = ("n_pcs", "n_neighbors", "seed", "resolution")

    @classmethod
    def load(cls, url: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> LabelConfig:
        """From a YAML file (its ``labels`` section, or the whole file) or the defaults, then
        ``key=value`` overrides (``markers.panglaodb=...``)."""
        return load_config(cls, url, "labels", overrides)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)

    def label_set_id(self, markers_hash: str) -> str:
        """Stable name of the label set: a hash of every setting that decides the labels and of the
        marker database's content (``method: paper`` ignores the improved method's options)."""
        exclude = {"markers"} | (set(self.IMPROVED_FIELDS) if self.method == "paper" else set())
        payload = json.dumps({"config": self.model_dump(exclude=exclude), "markers": markers_hash}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


#: The improved method with one fix switched back to the paper's rule: Table 3's ablation rows.
ABLATIONS: dict[str, dict] = {
    "w/o shared lineages": {"shared_lineages": False},
    "w/o up-regulated markers": {"up_markers": False},
    "w/o state-gene exclusion": {"skip_state_genes": False},
    "w/o specificity weights": {"specificity": False},
    "w/o effect weights": {"effect_weights": False},
    "w/o cancer test": {"cancer_test": False},
    "w/o epithelial contrast": {"cancer_within_epithelium": False},
    "w/o lineage filter": {"lineage_filter": False},
    "w/o tumour-gene coverage": {"tumour_coverage": False},
    "w/o Hier": {"hierarchy": False},
}
