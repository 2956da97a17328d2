"""Ingest for training (stage 4): patch shards + a label set -> augmented CellViT samples.

Patches never carry labels. A patch record's ``cell_ids`` (entry i-1 = slide cell id of instance
i) join the label table of its slide at training time, so a new label set never re-cuts images.
Per patch, on CPU workers (the training process computes no targets):

1. decode the image (RGB uint8) and the instance map;
2. per-instance class names from the label table (cells missing from it -> ``Unknown``);
3. augmentation (:mod:`stx_platform.training.augmentation`): rot90, horizontal and vertical flips
   applied identically to image and instance map, then the albumentations ops the config turns on
   (the crop and the elastic warp move the map too); the colour jitter of the image is drawn here
   and applied by the train worker on its device (:func:`to_model`);
4. targets of the *augmented* instance map (:func:`stx_platform.targets.targets`, as CellViT
   computes HV maps after augmentation): ``binary``, ``hv``, ``type`` (Unknown -> -1, ignored by
   the type loss);
5. ``tissue`` = the PanNuke tissue index of the slide's organ (-1 when it is not one of PanNuke's
   19 tissues); batches travel in compact dtypes (:data:`SENT_DTYPES`: uint8 image and binary,
   float16 hv, int8 type, the colour jitter's parameters) and the train worker widens them,
   jitters the colour and normalises the image to ``(x / 255 - 0.5) / 0.5`` on its device
   (:func:`to_model`).

The pure functions (:func:`make_sample`, :func:`transform_batch`) need no Ray;
:func:`training_dataset` wires them into a Ray Data pipeline (``map_batches`` with actors that read
shard row groups and load each slide's label table once per worker).
"""

from __future__ import annotations

import zlib
from collections import Counter
from itertools import repeat
from functools import lru_cache
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from stx_platform import storage
from stx_platform.build.manifest import done_slides, label_path
from stx_platform.labels.table import read_label_table
from stx_platform.organs import canonical_organ
from stx_platform.patches.schema import decode_image, decode_instance_map
from stx_platform.targets import targets
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER, UNKNOWN
from stx_platform.training.augmentation import (AugmentConfig, apply_colour, apply_geometry, augment_shape, colour_image,
                                                normalise)

#: PanNuke's 19 tissues in CellViT's tissue-head order (alphabetical, as CellViT's dataset config).
PANNUKE_TISSUES: tuple[str, ...] = (
    "Adrenal_gland", "Bile-duct", "Bladder", "Breast", "Cervix", "Colon", "Esophagus", "HeadNeck", "Kidney",
    "Liver", "Lung", "Ovarian", "Pancreatic", "Prostate", "Skin", "Stomach", "Testis", "Thyroid", "Uterus")

#: canonical organ key (:func:`stx_platform.organs.canonical_organ`) -> PanNuke tissue name; the same
#: pairs as the synthetic organ recipes' ``pannuke_tissue`` (lymph nodes are no PanNuke tissue).
ORGAN_TO_PANNUKE: dict[str, str] = {
    "breast": "Breast", "colon": "Colon", "kidney": "Kidney", "liver": "Liver", "lung": "Lung",
    "ovary": "Ovarian", "pancreas": "Pancreatic", "prostate": "Prostate", "skin": "Skin", "stomach": "Stomach",
    "thyroid": "Thyroid", "uterus": "Uterus"}

_TISSUE_BY_LOWER = {t.lower().replace("-", "_"): i for i, t in enumerate(PANNUKE_TISSUES)}

#: patch record columns that ingest reads (the rest of PATCH_SCHEMA is not needed for training)
READ_COLUMNS: tuple[str, ...] = ("sample_id", "organ", "patch_id", "image", "instance_map", "cell_ids")


@lru_cache(maxsize=256)
def tissue_index(organ: str | None) -> int:
    """Index into :data:`PANNUKE_TISSUES` of an organ name from any source; -1 (ignored) when none fits."""
    if not organ:
        return -1
    key = canonical_organ(organ)
    if key is not None:
        name = ORGAN_TO_PANNUKE.get(key)
        return PANNUKE_TISSUES.index(name) if name else -1
    return _TISSUE_BY_LOWER.get(str(organ).strip().lower().replace(" ", "_").replace("-", "_"), -1)


# ---------------------------------------------------------------- labels

def _label_url(dataset_url: str, slide: dict, label_set_id: str | None) -> str:
    rel = slide["label_table"] if label_set_id is None else label_path(label_set_id, slide["sample_id"])
    return storage.join(dataset_url, rel)


def _read_labels(url: str) -> pd.Series:
    cells, _ = read_label_table(url)
    return cells["label"]


def load_labels(dataset_url: str, label_set_id: str | None = None,
                sample_ids: Iterable[str] | None = None) -> dict[str, pd.Series]:
    """``{sample_id: Series of class names indexed by cell id}`` for the done slides of a dataset.

    ``label_set_id=None`` takes each slide's label table named in the manifest; otherwise
    ``<dataset>/labels/<label_set_id>/<sample>.parquet``.
    """
    wanted = None if sample_ids is None else set(sample_ids)
    return {s["sample_id"]: _read_labels(_label_url(dataset_url, s, label_set_id))
            for s in done_slides(dataset_url) if wanted is None or s["sample_id"] in wanted}


class LabelLookup(Mapping):
    """Lazy ``{sample_id: labels}``: a slide's label table is read the first time one of its
    patches is seen, then kept (one read per slide per worker), with a dict of it for the
    per-patch join (:meth:`by_cell`: a few dict lookups instead of a pandas index per patch)."""

    def __init__(self, dataset_url: str, label_set_id: str | None = None):
        self.dataset_url, self.label_set_id = dataset_url, label_set_id
        self._slides = {s["sample_id"]: s for s in done_slides(dataset_url)}
        self._cache: dict[str, pd.Series] = {}
        self._dicts: dict[str, dict] = {}
        self._index: dict[str, dict | None] = {}

    def by_cell(self, sample_id: str) -> dict | None:
        """``{cell id: class name}`` of a slide; None for a slide the dataset does not hold."""
        if sample_id not in self._dicts:
            if sample_id not in self._slides:
                return None
            labels = self[sample_id]
            self._dicts[sample_id] = dict(zip(labels.index, labels.to_numpy(object)))
            del self._cache[sample_id]          # one copy per slide in memory
        return self._dicts[sample_id]

    def type_by_cell(self, sample_id: str) -> dict | None:
        """``{cell id: index into PANNUKE_TYPE_ORDER}`` (Unknown -> -1) of a slide, for the join
        straight to class indices (:func:`instance_types`); None for a slide the dataset does not
        hold or whose table names a class that is no PanNuke type (the names path reports it)."""
        if sample_id not in self._index:
            names = self.by_cell(sample_id)
            index = {**{c: i for i, c in enumerate(PANNUKE_TYPE_ORDER)}, UNKNOWN: -1}
            ok = names is not None and set(names.values()) <= index.keys()
            self._index[sample_id] = {c: index[v] for c, v in names.items()} if ok else None
        return self._index[sample_id]

    def __getitem__(self, sample_id: str) -> pd.Series:
        if sample_id not in self._cache:
            self._cache[sample_id] = _read_labels(_label_url(self.dataset_url, self._slides[sample_id],
                                                             self.label_set_id))
        return self._cache[sample_id]

    def __iter__(self):
        return iter(self._slides)

    def __len__(self) -> int:
        return len(self._slides)


def instance_classes(cell_ids: Sequence[str], labels: pd.Series | Mapping | None) -> np.ndarray:
    """Class name per instance id (object array of length n + 1; entry 0 = ``"Background"``, unused).

    Instance i is ``cell_ids[i - 1]``; cells absent from ``labels`` (a Series or a dict of class
    names by cell id, or None) are Unknown.
    """
    ids = [c.decode() if isinstance(c, bytes) else str(c) for c in cell_ids]
    out = np.empty(len(ids) + 1, object)
    out[0] = "Background"
    if not ids:
        return out
    if labels is None:
        out[1:] = UNKNOWN
    elif not isinstance(labels, pd.Series):
        out[1:] = [labels.get(c, UNKNOWN) for c in ids]
    else:
        pos = labels.index.get_indexer(ids)     # -1 where the cell is not in the table
        values = labels.to_numpy(object)
        out[1:] = np.where(pos >= 0, values[np.maximum(pos, 0)] if len(values) else UNKNOWN, UNKNOWN)
    return out


def instance_types(cell_ids: Sequence[str], types: Mapping) -> np.ndarray:
    """:func:`instance_classes` as class indices (int64, length n + 1, entry 0 = 0): ``types`` maps
    cell id -> index into PANNUKE_TYPE_ORDER (Unknown -> -1; absent cells -1). One C-level pass
    (``map(types.get, ...)``) instead of a name per instance looked up twice."""
    ids = cell_ids.tolist() if isinstance(cell_ids, np.ndarray) else list(cell_ids)
    if set(map(type, ids)) - {str}:
        ids = [c.decode() if isinstance(c, bytes) else str(c) for c in ids]
    out = np.empty(len(ids) + 1, np.int64)
    out[0] = 0
    out[1:] = np.fromiter(map(types.get, ids, repeat(-1)), np.int64, len(ids))
    return out


def _classes(cell_ids, labels, sample_id) -> np.ndarray:
    """The classes of a record's instances for :func:`~stx_platform.targets.targets`: indices from a
    LabelLookup's :meth:`~LabelLookup.type_by_cell` where it has them, else names
    (:func:`instance_classes`)."""
    if isinstance(labels, LabelLookup):
        types = labels.type_by_cell(str(sample_id))
        if types is not None:
            return instance_types(cell_ids, types)
    return instance_classes(cell_ids, _labels_for(labels, sample_id))


def _labels_for(labels, sample_id) -> pd.Series | dict | None:
    if labels is None or isinstance(labels, pd.Series):
        return labels
    if isinstance(labels, LabelLookup):
        return labels.by_cell(str(sample_id))
    try:
        return labels[str(sample_id)]
    except KeyError:
        return None


_augment = augment_shape    # the name ``augment`` is also a parameter below


# ---------------------------------------------------------------- samples

def _prepare(record: Mapping, labels, rng: np.random.Generator | None, augment: bool,
             config: AugmentConfig | None, defer_image: bool = False, into: np.ndarray | None = None) -> tuple:
    """Decode, label join and augmentation of one record -> (RGB uint8 image, instance map,
    classes, colour parameters still to apply or None, geometry still to apply to the image or
    None: see :func:`~stx_platform.training.augmentation.augment_shape`). The image is decoded
    into ``into`` where the codec can (:func:`~stx_platform.patches.schema.decode_image`)."""
    img = decode_image(record["image"], into)
    inst = decode_instance_map(record["instance_map"], dtype=None)
    classes = _classes(record["cell_ids"], labels, record.get("sample_id"))
    colour = geometry = None
    if augment:
        img, inst, colour, geometry = _augment(img, inst, rng if rng is not None else np.random.default_rng(), config,
                                               defer_image)
    elif img.shape[:2] != inst.shape:
        raise ValueError(f"image {img.shape} and instance map {inst.shape} differ in size")
    return img, inst, classes, colour, geometry


def make_sample(record: Mapping, labels, rng: np.random.Generator | None = None, augment: bool = True,
                config: AugmentConfig | None = None) -> dict:
    """One patch record (PATCH_SCHEMA fields; ``image``, ``instance_map``, ``cell_ids`` and ``organ``
    needed) -> a training sample: ``image`` float32 (3, H, W) normalised, ``binary`` uint8 (H, W),
    ``hv`` float32 (2, H, W), ``type`` int64 (H, W) with -1 for Unknown nuclei, ``tissue`` int,
    and ``sample_id`` / ``patch_id`` when the record has them.

    ``labels``: a Series of class names indexed by cell id (this slide's), a mapping
    ``{sample_id: Series}``, or None (every nucleus Unknown).
    """
    img, inst, classes, colour, _ = _prepare(record, labels, rng, augment, config)
    out = targets(inst, classes)
    if colour is None:
        out["image"] = normalise(img)
    else:
        out["image"] = normalise(colour_image(img, colour))
    out["tissue"] = tissue_index(record.get("organ"))
    for key in ("sample_id", "patch_id"):
        if record.get(key) is not None:
            out[key] = str(record[key])
    return out


def patch_rng(seed: int, epoch: int, patch_id: str) -> np.random.Generator:
    """The generator of one patch's augmentation: fixed by (seed, epoch, patch id), whatever the batching."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF,
                                  zlib.crc32(str(patch_id).encode())])


#: dtypes of the arrays :func:`transform_batch` sends through the object store; the train worker
#: widens them on its device and applies the colour jitter there (:func:`to_model`). 0.59 MB per
#: 256 px sample against 2.36 MB as float32 / int64 (hv in fp16 rounds by at most 2**-11 = 4.9e-4
#: on its [-1, 1] range; :func:`~stx_platform.targets.targets` writes it as float16 directly, bit
#: for bit the float32 map's round-to-nearest-even cast); ``colour`` (96 bytes) only in augmented
#: batches with colour jitter on.
SENT_DTYPES = {"image": np.uint8, "binary": np.uint8, "hv": np.float16, "type": np.int8, "tissue": np.int64,
               "colour": np.float32, "geometry": np.int8}


def transform_batch(batch: Mapping[str, np.ndarray], labels, seed: int = 0, augment: bool = True,
                    config: AugmentConfig | None = None, epoch: int | Sequence[int] = 0,
                    keep_ids: bool = False) -> dict[str, np.ndarray]:
    """A numpy batch of patch records (Ray Data ``batch_format="numpy"`` or columns read with
    pyarrow) -> stacked training arrays in compact dtypes (:data:`SENT_DTYPES`):

    - ``image`` (B, H, W, 3) uint8 RGB, not normalised: as decoded when the batch has
      ``geometry``, else with the geometric and albumentations ops done;
    - ``binary`` (B, H, W) uint8; ``hv`` (B, 2, H, W) float16; ``type`` (B, H, W) int8 with -1 for
      Unknown; all of the augmented instance map; ``tissue`` (B,) int64;
    - when augmenting: ``geometry`` (B, 3) int8, the rot90 / flips still to apply to the image
      (square patches without albumentations ops), and ``colour`` (B, 2, 3, 4) float32, the colour
      jitter still to apply (with colour on);
    - with ``keep_ids`` also ``sample_id`` / ``patch_id`` (B,) str.

    Each patch's augmentation is drawn from :func:`patch_rng` (``epoch`` may be one int or one
    per row). :func:`to_model` does what is left on the train worker's device and turns a batch
    into :func:`make_sample`'s values (normalised float32 image, int64 targets, float32 hv)."""
    n = len(batch["image"])
    epochs = np.broadcast_to(np.asarray(epoch, np.int64), (n,))
    keys = [k for k in READ_COLUMNS if k in batch]
    out: dict[str, np.ndarray] = {}
    sids, pids = [], []
    for i in range(n):
        rec = {k: batch[k][i] for k in keys}
        pid = str(rec.get("patch_id", i))
        row = out["image"][i] if out else None      # decoded in place once the batch exists
        img, inst, classes, colour, geometry = _prepare(rec, labels, patch_rng(seed, int(epochs[i]), pid), augment,
                                                        config, defer_image=True, into=row)
        if not out:
            out = _empty_batch(n, *inst.shape, colour is not None, geometry is not None)
        elif inst.shape != out["type"].shape[1:]:
            raise ValueError(f"patch {pid}: size {inst.shape} differs from the batch's {out['type'].shape[1:]}")
        if colour is not None:
            out["colour"][i] = colour
        if geometry is not None:
            out["geometry"][i] = geometry
        targets(inst, classes, out={"binary": out["binary"][i], "hv": out["hv"][i], "type": out["type"][i]})
        if img is not row:
            out["image"][i] = img
        out["tissue"][i] = tissue_index(rec.get("organ"))
        sids.append(str(rec.get("sample_id", "")))
        pids.append(pid)
    if not n:
        out = _empty_batch(0, 0, 0)
    if keep_ids:
        out["sample_id"] = np.asarray(sids, dtype=object)
        out["patch_id"] = np.asarray(pids, dtype=object)
    return out


def _empty_batch(n: int, h: int, w: int, colour: bool = False, geometry: bool = False) -> dict[str, np.ndarray]:
    """Uninitialised batch arrays in :data:`SENT_DTYPES`, views of one allocation (64-byte aligned
    each): a single block per batch is reused by the allocator from batch to batch (and is
    huge-page backed when large) where separate arrays would fault in fresh pages every batch."""
    shapes = {"image": (n, h, w, 3), "binary": (n, h, w), "hv": (n, 2, h, w), "type": (n, h, w), "tissue": (n,)}
    if colour:
        shapes["colour"] = (n, 2, 3, 4)
    if geometry:
        shapes["geometry"] = (n, 3)
    counts = {k: int(np.prod(shape)) for k, shape in shapes.items()}
    sizes = {k: -(-counts[k] * np.dtype(SENT_DTYPES[k]).itemsize // 64) * 64 for k in shapes}
    buf = np.empty(sum(sizes.values()) + 64, np.uint8)
    out, at = {}, -buf.ctypes.data % 64
    for k, shape in shapes.items():
        out[k] = buf[at:at + sizes[k]].view(SENT_DTYPES[k])[:counts[k]].reshape(shape)
        at += sizes[k]
    return out


def _normalised(x):
    """0..255 image tensor -> float32 ``(x / 255 - 0.5) / 0.5``, as :func:`normalise` computes it."""
    return x.float().mul_(2.0 / 255.0).sub_(1.0)


def to_model(batch: Mapping) -> tuple:
    """A batch of :func:`transform_batch`'s arrays as torch tensors (on the train worker's device)
    -> (image float32 (B, 3, H, W), moved by its ``geometry`` and colour-jittered by its ``colour``
    when the batch has them, normalised to [-1, 1] as :func:`normalise` does; targets
    ``{"binary": int64, "hv": float32, "type": int64, "tissue": int64}``). The widening and the
    per-pixel image work are done where the batch is used (on a GPU, next to nothing), so the
    object store and the host-to-device copy carry the compact dtypes and the CPU ingest only
    decodes, moves the instance map and computes targets."""
    x = batch["image"]
    x = (apply_geometry(x, batch["geometry"]) if "geometry" in batch else x).permute(0, 3, 1, 2)
    x = _normalised(apply_colour(x, batch["colour"]) if "colour" in batch else x)
    tgt = {"binary": batch["binary"].long(), "hv": batch["hv"].float(), "type": batch["type"].long(),
           "tissue": batch["tissue"].long()}
    return x, tgt


def in_epoch_sample(seed: int, epoch: int, patch_id: str, fraction: float) -> bool:
    """Whether a patch is among the ``fraction`` drawn for this epoch: fixed by (seed, epoch, patch id)."""
    if fraction >= 1.0:
        return True
    return zlib.crc32(f"{seed}:{epoch}:{patch_id}".encode()) < fraction * 2 ** 32


class TransformBatch:
    """Ray Data ``map_batches`` callable (an actor): loads each slide's label table once per worker
    (lazily) and applies :func:`transform_batch`. A patch's n-th visit on this worker uses epoch n,
    so a patch gets fresh augmentation every epoch."""

    def __init__(self, dataset_url: str, label_set_id: str | None = None, seed: int = 0, augment: bool = True,
                 config: AugmentConfig | None = None):
        self.labels = LabelLookup(dataset_url, label_set_id)
        self.seed, self.augment, self.config = seed, augment, config
        self._visits: Counter = Counter()

    def _epochs(self, patch_ids) -> list[int]:
        pids = [str(p) for p in patch_ids]
        epochs = [self._visits[p] for p in pids]
        self._visits.update(pids)
        return epochs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return transform_batch(batch, self.labels, self.seed, self.augment, self.config,
                               epoch=self._epochs(batch["patch_id"]))


class ShardUnitReader(TransformBatch):
    """Ray Data ``map_batches`` callable over shard units (``url``, ``row_group``): reads each row
    group of a patch shard (only :data:`READ_COLUMNS`), keeps this epoch's ``fraction`` of its
    patches (:func:`in_epoch_sample`, decided before decoding), and yields transformed batches of
    ``batch_size``. Reading inside the actor keeps encoded patches out of the object store and
    needs no separate read tasks (whose CPUs a small machine may not have to spare)."""

    def __init__(self, dataset_url: str, label_set_id: str | None = None, seed: int = 0, augment: bool = True,
                 config: AugmentConfig | None = None, fraction: float = 1.0, batch_size: int = 16):
        super().__init__(dataset_url, label_set_id, seed, augment, config)
        self.fraction, self.batch_size = fraction, batch_size

    def __call__(self, units: dict[str, np.ndarray]):
        import pyarrow.parquet as pq

        for url, rg in zip(units["url"], units["row_group"]):
            with storage.open_file(str(url)) as f:
                table = pq.ParquetFile(f).read_row_group(int(rg), columns=list(READ_COLUMNS))
            cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}
            epochs = np.asarray(self._epochs(cols["patch_id"]), np.int64)
            keep = np.flatnonzero([in_epoch_sample(self.seed, e, str(p), self.fraction)
                                   for e, p in zip(epochs, cols["patch_id"])])
            for s in range(0, len(keep), self.batch_size):
                rows = keep[s:s + self.batch_size]
                yield transform_batch({k: v[rows] for k, v in cols.items()}, self.labels, self.seed, self.augment,
                                      self.config, epoch=epochs[rows])


# ---------------------------------------------------------------- Ray Data

def shard_urls(dataset_url: str, sample_ids: Iterable[str] | None = None) -> list[str]:
    """URLs of the patch shards of the dataset's done slides (only ``sample_ids`` when given)."""
    wanted = None if sample_ids is None else set(sample_ids)
    return [storage.join(dataset_url, s["shard"]) for s in done_slides(dataset_url)
            if wanted is None or s["sample_id"] in wanted]


def shard_units(urls: Sequence[str]) -> list[dict]:
    """One ``{"url", "row_group", "rows"}`` per row group of each shard (from the Parquet footers)."""
    import pyarrow.parquet as pq

    units = []
    for u in urls:
        with storage.open_file(u) as f:
            meta = pq.ParquetFile(f).metadata
        units += [{"url": u, "row_group": i, "rows": meta.row_group(i).num_rows} for i in range(meta.num_row_groups)]
    return units


def training_dataset(dataset_url: str, label_set_id: str | None = None, *, augment: bool = True, seed: int = 0,
                     batch_size: int = 16, config: AugmentConfig | None = None, num_cpus: float = 0.5,
                     concurrency: int | tuple[int, int] = (1, 2), samples_per_epoch: int | None = None,
                     sample_ids: Iterable[str] | None = None):
    """A Ray Dataset of training samples from the done slides of ``<dataset>/manifest.json``
    (only ``sample_ids`` when given: a held-out split trains on the other slides).

    The shards' row groups are the units of work: their order is shuffled anew on every execution
    (= every epoch, reproducibly from ``seed``), then :class:`ShardUnitReader` actors (``num_cpus``
    each, fractional so that train workers keep CPUs on a small machine; ``concurrency`` = min/max
    actors) read, decode, join labels, augment and compute targets, streaming batches of
    ``batch_size``. ``samples_per_epoch`` keeps that many patches per epoch on average, a fresh
    draw each epoch. Mixing across row groups is the consumer's
    ``iter_torch_batches(local_shuffle_buffer_size=...)``.
    Columns: image, binary, hv, type, tissue (see :func:`transform_batch`).
    """
    import ray.data
    from ray.data import RandomSeedConfig

    lo, hi = (concurrency, concurrency) if isinstance(concurrency, int) else concurrency
    urls = shard_urls(dataset_url, sample_ids)
    if not urls:
        raise ValueError(f"{dataset_url}: the manifest lists no done slides"
                         + ("" if sample_ids is None else f" among {sorted(sample_ids)}"))
    units = shard_units(urls)
    total = sum(u["rows"] for u in units)
    fraction = min(1.0, samples_per_epoch / total) if samples_per_epoch and total else 1.0
    ds = ray.data.from_items([{"url": u["url"], "row_group": u["row_group"]} for u in units],
                             override_num_blocks=len(units))
    ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    return ds.map_batches(ShardUnitReader, fn_constructor_kwargs={
        "dataset_url": dataset_url, "label_set_id": label_set_id, "seed": seed, "augment": augment,
        "config": config, "fraction": fraction, "batch_size": batch_size}, batch_size=1, batch_format="numpy",
        num_cpus=num_cpus, compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi))
