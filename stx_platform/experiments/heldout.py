"""Held-out slides' patches as evaluation items, and each nucleus's majority predicted type.

Truth for segmentation is the patch's instance map (the slide's nucleus polygons); truth for
classification is the slide's annotation (``ground_truth['class']`` by cell id), so neither
model is scored against ST-derived labels. Cells the annotation leaves Unknown, or does not
list, are unlabelled: they count for detection and segmentation, not for the type scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stx_platform import storage
from stx_platform.build.manifest import done_slides
from stx_platform.patches.schema import decode_image, decode_instance_map
from stx_platform.sources.pannuke import PanNukeItem
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER, SCORED_CLASSES, UNKNOWN

COLUMNS = ("sample_id", "organ", "patch_id", "image", "instance_map", "cell_ids", "nucleus_count")


class DatasetPatches:
    """The patches of slides ``sample_ids`` of a built dataset, most nuclei first; ``items[i]`` is a
    :class:`PanNukeItem` (image, instance map, ``{instance id: class}``, organ), as
    :func:`stx_platform.training.validate.evaluate` takes. ``truth``: class names by cell id per
    sample id (None: every nucleus unlabelled)."""

    def __init__(self, dataset: str, sample_ids: Iterable[str], truth: Mapping[str, pd.Series] | None = None):
        wanted = set(sample_ids)
        slides = [s for s in done_slides(dataset) if s["sample_id"] in wanted]
        missing = wanted - {s["sample_id"] for s in slides}
        if missing:
            raise ValueError(f"{dataset}: no done slide {', '.join(sorted(missing))}")
        tables = []
        for s in slides:
            with storage.open_file(storage.join(dataset, s["shard"])) as f:
                tables.append(pq.read_table(f, columns=list(COLUMNS)))
        table = pa.concat_tables(tables) if tables else None
        if table is not None:       # the most crowded patches first: the overlays show tissue, not glass
            table = table.take(np.argsort(-table.column("nucleus_count").to_numpy(), kind="stable"))
        self.table = table
        self.truth = truth or {}
        self.url = dataset

    def __len__(self) -> int:
        return 0 if self.table is None else self.table.num_rows

    def cell_ids(self, i: int) -> list[str]:
        """Cell id of each instance of patch ``i`` (entry k-1 = instance k)."""
        return [str(c) for c in self.table.column("cell_ids")[i].as_py()]

    def sample_id(self, i: int) -> str:
        return str(self.table.column("sample_id")[i].as_py())

    def __getitem__(self, i: int) -> PanNukeItem:
        if not 0 <= i < len(self):
            raise IndexError(i)
        row = {c: self.table.column(c)[i].as_py() for c in ("sample_id", "organ", "image", "instance_map")}
        truth = self.truth.get(row["sample_id"])
        ids = self.cell_ids(i)
        if truth is None:
            classes = {k: UNKNOWN for k in range(1, len(ids) + 1)}
        else:
            names = truth.reindex(ids).fillna(UNKNOWN).astype(str).to_numpy()
            classes = {k: (n if n in SCORED_CLASSES else UNKNOWN) for k, n in enumerate(names, 1)}
        return PanNukeItem(decode_image(row["image"]), decode_instance_map(row["instance_map"]), classes,
                           str(row["organ"]))


def pooled(by_sample: Mapping[str, pd.Series]) -> pd.Series:
    """Per-sample Series indexed by cell id -> one Series indexed ``"<sample id>/<cell id>"`` (the
    keys :class:`NucleusVotes` gives), so several slides score as one."""
    parts = [s.rename(lambda c, sid=sid: f"{sid}/{c}") for sid, s in by_sample.items()]
    return pd.concat(parts) if parts else pd.Series([], dtype=object)


def type_votes(type_prob: np.ndarray, inst: np.ndarray) -> np.ndarray:
    """Pixel votes per instance: (n + 1, C) counts of the most probable nucleus class (background
    left out of the argmax) over each instance's pixels, row k = instance k. Summed over the
    patches a nucleus appears in, the row's argmax is its majority type."""
    n_types = type_prob.shape[0]
    pred = type_prob[1:].argmax(0).ravel() + 1
    flat = inst.ravel().astype(np.int64)
    n = int(flat.max()) if flat.size else 0
    return np.bincount(flat * n_types + pred, minlength=(n + 1) * n_types).reshape(n + 1, n_types)


class NucleusVotes:
    """Accumulates :func:`type_votes` by (sample id, cell id); :meth:`classes` gives the majority
    type of every nucleus seen (Dead, which no label can be, reads as Unknown)."""

    def __init__(self):
        self._votes: dict[str, np.ndarray] = {}

    def add(self, sample_id: str, cell_ids: list[str], votes: np.ndarray) -> None:
        for k, cid in enumerate(cell_ids, 1):
            if k < len(votes) and votes[k].any():
                key = f"{sample_id}/{cid}"
                self._votes[key] = self._votes.get(key, 0) + votes[k]

    def classes(self) -> pd.Series:
        names = np.array([c if c in SCORED_CLASSES else UNKNOWN for c in PANNUKE_TYPE_ORDER], object)
        keys = list(self._votes)
        if not keys:
            return pd.Series([], dtype=object)
        best = np.stack([self._votes[k] for k in keys]).argmax(1)
        return pd.Series(names[best], index=keys)
