"""Label-generation settings with the paper's defaults, loadable from YAML, overridable by
``key=value`` strings; a stable hash of the settings (and the marker database) names a label set."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar

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
    """The paper's label generation (Sec. 4.1) with its defaults (Sec. 5, implementation details)."""

    model_config = ConfigDict(extra="forbid")
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

    CLUSTER_FIELDS: ClassVar[tuple[str, ...]] = ("n_pcs", "n_neighbors", "seed", "resolution")

    @classmethod
    def load(cls, url: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> LabelConfig:
        """From a YAML file (its ``labels`` section, or the whole file) or the defaults, then
        ``key=value`` overrides (``markers.panglaodb=...``)."""
        return load_config(cls, url, "labels", overrides)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)

    def label_set_id(self, markers_hash: str) -> str:
        """Stable name of the label set: a hash of every setting and of the marker database's content."""
        payload = json.dumps({"config": self.model_dump(exclude={"markers"}), "markers": markers_hash}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]
