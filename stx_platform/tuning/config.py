"""Sweep settings: which label hyperparameters to search, how, and what to score them by; loadable
from the ``tune`` section of a YAML file and overridable by ``key=value``.

A search space entry is either a list of values (a choice; a grid axis under grid search) or a
range ``{low, high, log}`` (uniform; integers for integer fields, bounds inclusive):

    tune:
      metric: mPQ
      num_samples: 8
      space:
        resolution: [2.0, 4.0, 6.0]
        cancer_alpha: {low: 0.005, high: 0.2, log: true}
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stx_platform.config_io import apply_overrides, read_section
from stx_platform.labels.config import LabelConfig
from stx_platform.training.config import METRICS

#: LabelConfig fields a sweep may search (the marker database is data, not a hyperparameter)
TUNABLE: tuple[str, ...] = tuple(f for f in LabelConfig.model_fields if f != "markers")


class Range(BaseModel):
    """A continuous (or integer, for integer fields) range, bounds inclusive."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"range needs low < high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


def default_space() -> dict[str, list | Range]:
    """Around the default method's settings (r=4, N=10, M=20, tau_vote=5, z_min=2, alpha=0.05,
    hierarchy on). The resolution is a short list: every new value reclusters each slide once.
    (``labels: {method: paper}`` with ``space.tau_cancer=...`` tunes the paper's rules.)"""
    return {"resolution": [2.0, 4.0, 6.0],
            "top_n": Range(low=5, high=15),
            "top_m": Range(low=10, high=30),
            "tau_vote": Range(low=2.0, high=8.0),
            "min_z": Range(low=1.0, high=5.0),
            "cancer_alpha": Range(low=0.005, high=0.2, log=True),
            "hierarchy": [True, False]}


def _is_int_field(name: str) -> bool:
    return LabelConfig.model_fields[name].annotation is int


class SweepConfig(BaseModel):
    """One Tune sweep over label configs; each trial relabels the dataset and trains CellViT."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal[METRICS] = Field("mPQ", description="PanNuke validation metric to maximise")  # type: ignore[valid-type]
    num_samples: int = Field(8, ge=1, description="trials (random/optuna search); grid search runs each point once")
    search: Literal["auto", "random", "grid", "optuna"] = Field(
        "auto", description="auto: optuna when installed, else random")
    space: dict[str, list[Any] | Range] = Field(default_factory=default_space)
    early_stopping: bool = Field(True, description="ASHA: stop trials that trail the others after an epoch")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs every trial gets before it may be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor of trials per rung")
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: as many as the cluster's CPUs/GPUs fit")
    max_failures: int = Field(0, ge=0, description="retries of a failed trial (it resumes from its checkpoint)")
    cpus_per_slide: float = Field(1.0, gt=0, description="CPUs of each slide's labelling task")
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _check_space(cls, space: dict) -> dict:
        if not space:
            raise ValueError("the search space is empty")
        for name, spec in space.items():
            if name not in TUNABLE:
                raise ValueError(f"space: {name!r} is not a label setting; tunable: {', '.join(TUNABLE)}")
            values = list(spec) if isinstance(spec, list) else [spec.low, spec.high]
            if not values:
                raise ValueError(f"space: {name} has no values")
            if isinstance(spec, Range) and LabelConfig.model_fields[name].annotation not in (int, float):
                raise ValueError(f"space: {name} is not numeric; give a list of values")
            for v in values:   # every value (range ends) must make a valid LabelConfig
                try:
                    LabelConfig.model_validate({name: int(v) if isinstance(spec, Range) and _is_int_field(name)
                                                else v})
                except ValueError as e:
                    raise ValueError(f"space: {name}={v!r} is not a valid label setting: "
                                     f"{e.errors()[0]['msg'] if hasattr(e, 'errors') else e}") from None
        return space

    @model_validator(mode="after")
    def _check_grid(self) -> SweepConfig:
        if self.search == "grid":
            ranges = [k for k, v in self.space.items() if isinstance(v, Range)]
            if ranges:
                raise ValueError(f"grid search needs a list of values for {', '.join(ranges)} (not a range)")
        if self.search == "optuna" and not optuna_installed():
            raise ValueError("search: optuna, but optuna is not installed (pip install optuna)")
        return self

    @classmethod
    def load(cls, url: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
        """From the ``tune`` section of a YAML file (or the defaults), then ``key=value`` overrides:
        ``space={tau_cancer: [0.1, 0.3]}`` replaces the space, ``space.tau_cancer=[0.1, 0.3]``
        changes one entry of it (of the default space when the file has none)."""
        data = read_section(url, "tune")
        if "space" not in data and any(o.split("=", 1)[0].strip().startswith("space.") for o in overrides):
            data["space"] = {k: v.model_dump() if isinstance(v, Range) else v for k, v in default_space().items()}
        return cls.model_validate(apply_overrides(data, overrides))

    @property
    def algorithm(self) -> str:
        """The search actually used (``auto`` resolved)."""
        if self.search == "auto":
            return "optuna" if optuna_installed() else "random"
        return self.search

    def grid_size(self) -> int:
        n = 1
        for v in self.space.values():
            n *= len(v)
        return n

    def trials(self) -> int:
        """How many trials the sweep runs."""
        return self.grid_size() if self.algorithm == "grid" else self.num_samples

    def param_space(self) -> dict:
        """The space in Ray Tune's terms."""
        from ray import tune

        out = {}
        for name, spec in self.space.items():
            if isinstance(spec, list):
                out[name] = tune.grid_search(spec) if self.algorithm == "grid" else tune.choice(spec)
            elif _is_int_field(name):
                lo, hi = int(spec.low), int(spec.high) + 1   # randint's upper bound is exclusive
                out[name] = tune.lograndint(lo, hi) if spec.log else tune.randint(lo, hi)
            else:
                out[name] = tune.loguniform(spec.low, spec.high) if spec.log else tune.uniform(spec.low, spec.high)
        return out


def optuna_installed() -> bool:
    return importlib.util.find_spec("optuna") is not None
