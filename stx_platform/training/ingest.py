"""Ingest for training (stage 4): patch shards + a label set -> augmented CellViT samples.

Patches never carry labels. A patch record's ``cell_ids`` (entry i-1 = slide cell id of instance
i) join the label table of its slide at training time, so a new label set never re-cuts images.
Per patch, on CPU workers (the training process computes no targets):

1. decode the image (RGB uint8) and the instance map;
2. per-instance class names from the label table (cells missing from it -> ``Unknown``);
3. augmentation: rot90 (k uniform in 0..3), horizontal and vertical flips (p 0.5 each), applied
   identically to image and instance map, then colour jitter on the image only (H&E stain jitter
   in optical density with fixed reference stain vectors, brightness, contrast, saturation);
4. targets of the *augmented* instance map (:func:`stx_platform.targets.targets`, as CellViT
   computes HV maps after augmentation): ``binary``, ``hv``, ``type`` (Unknown -> -1, ignored by
   the type loss);
5. the image normalised to ``(x / 255 - 0.5) / 0.5`` as float32 (3, H, W), and ``tissue`` = the
   PanNuke tissue index of the slide's organ (-1 when it is not one of PanNuke's 19 tissues).

The pure functions (:func:`make_sample`, :func:`transform_batch`) need no Ray;
:func:`training_dataset` wires them into a Ray Data pipeline (``map_batches`` with an actor class
that loads each slide's label table once per worker).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stx_platform import storage
from stx_platform.build.manifest import done_slides, label_path
from stx_platform.labels.table import read_label_table
from stx_platform.organs import canonical_organ
from stx_platform.patches.schema import decode_image, decode_instance_map
from stx_platform.targets import targets
from stx_platform.taxonomy import UNKNOWN

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
    patches is seen, then kept (one read per slide per worker)."""

    def __init__(self, dataset_url: str, label_set_id: str | None = None):
        self.dataset_url, self.label_set_id = dataset_url, label_set_id
        self._slides = {s["sample_id"]: s for s in done_slides(dataset_url)}
        self._cache: dict[str, pd.Series] = {}

    def __getitem__(self, sample_id: str) -> pd.Series:
        if sample_id not in self._cache:
            self._cache[sample_id] = _read_labels(_label_url(self.dataset_url, self._slides[sample_id],
                                                             self.label_set_id))
        return self._cache[sample_id]

    def __iter__(self):
        return iter(self._slides)

    def __len__(self) -> int:
        return len(self._slides)


def instance_classes(cell_ids: Sequence[str], labels: pd.Series | None) -> np.ndarray:
    """Class name per instance id (object array of length n + 1; entry 0 = ``"Background"``, unused).

    Instance i is ``cell_ids[i - 1]``; cells absent from ``labels`` (or ``labels=None``) are Unknown.
    """
    ids = [c.decode() if isinstance(c, bytes) else str(c) for c in cell_ids]
    out = np.empty(len(ids) + 1, object)
    out[0] = "Background"
    if not ids:
        return out
    if labels is None:
        out[1:] = UNKNOWN
    else:
        out[1:] = labels.reindex(ids).fillna(UNKNOWN).to_numpy(object)
    return out


def _labels_for(labels, sample_id) -> pd.Series | None:
    if labels is None or isinstance(labels, pd.Series):
        return labels
    try:
        return labels[str(sample_id)]
    except KeyError:
        return None


# ---------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths. Geometric ops act on image and instance map alike; the rest on the image."""
    rot90: bool = True
    p_hflip: float = 0.5
    p_vflip: float = 0.5
    brightness: float = 0.1     # factor uniform in [1 - b, 1 + b]
    contrast: float = 0.1       # factor about the mean, uniform in [1 - c, 1 + c]
    saturation: float = 0.1     # factor about the grey value, uniform in [1 - s, 1 + s]
    stain_scale: float = 0.05   # H and E concentrations x uniform [1 - a, 1 + a]
    stain_shift: float = 0.02   # ... + uniform [-b, b] (optical density units)

    def geometric_only(self) -> AugmentConfig:
        return AugmentConfig(self.rot90, self.p_hflip, self.p_vflip, 0.0, 0.0, 0.0, 0.0, 0.0)


#: Reference stain vectors (optical density, rows H, E, residual; Ruifrok & Johnston 2001), unit rows.
STAIN_VECTORS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
STAIN_VECTORS = (STAIN_VECTORS / np.linalg.norm(STAIN_VECTORS, axis=1, keepdims=True)).astype(np.float32)
_STAIN_INV = np.linalg.inv(STAIN_VECTORS.astype(np.float64)).astype(np.float32)
_OD_LUT = (-np.log((np.arange(256) + 1.0) / 256.0)).astype(np.float32)   # uint8 -> optical density


def stain_jitter(rgb: np.ndarray, scale: Sequence[float], shift: Sequence[float]) -> np.ndarray:
    """H&E jitter of an (H, W, 3) image in 0..255 (uint8 or float): RGB -> optical density -> (H, E, residual)
    concentrations by the fixed stain vectors; H and E scaled by ``scale[0:2]`` and shifted by
    ``shift[0:2]``; back to RGB (float, clipped to 0..255)."""
    rgb = np.asarray(rgb)
    od = _OD_LUT[rgb] if rgb.dtype == np.uint8 else -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    c = od.reshape(-1, 3) @ _STAIN_INV
    c[:, :2] *= np.asarray(scale[:2], np.float32)
    c[:, :2] += np.asarray(shift[:2], np.float32)
    od2 = (c @ STAIN_VECTORS).reshape(rgb.shape)
    return np.clip(256.0 * np.exp(-od2) - 1.0, 0.0, 255.0)


def colour_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Stain, brightness, contrast and saturation jitter of an RGB uint8 image (returns uint8)."""
    if not (cfg.stain_scale or cfg.stain_shift or cfg.brightness or cfg.contrast or cfg.saturation):
        return img
    x = img.astype(np.float32)
    if cfg.stain_scale or cfg.stain_shift:
        x = stain_jitter(img, rng.uniform(1 - cfg.stain_scale, 1 + cfg.stain_scale, 2),
                         rng.uniform(-cfg.stain_shift, cfg.stain_shift, 2))
    if cfg.brightness:
        x *= np.float32(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness))
    if cfg.contrast:
        m = np.float32(x.mean())
        x = (x - m) * np.float32(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)) + m
    if cfg.saturation:
        grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        x = (x - grey) * np.float32(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)) + grey
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def augment(image: np.ndarray, inst: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, instance map (H, W)) -> augmented copies, still aligned pixel for pixel.

    rot90 by k ~ U{0..3}, horizontal flip, vertical flip (the same for both arrays), then colour
    jitter of the image. Targets are to be computed from the returned instance map.
    """
    cfg = config or AugmentConfig()
    if image.shape[:2] != inst.shape:
        raise ValueError(f"image {image.shape} and instance map {inst.shape} differ in size")
    k = int(rng.integers(4)) if cfg.rot90 else 0
    img, ins = np.rot90(image, k, axes=(0, 1)), np.rot90(inst, k, axes=(0, 1))
    if rng.random() < cfg.p_hflip:
        img, ins = img[:, ::-1], ins[:, ::-1]
    if rng.random() < cfg.p_vflip:
        img, ins = img[::-1], ins[::-1]
    img, ins = np.ascontiguousarray(img), np.ascontiguousarray(ins)
    return colour_jitter(img, rng, cfg), ins


_augment = augment


def normalise(image: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]: ``(x / 255 - 0.5) / 0.5``."""
    x = image.transpose(2, 0, 1).astype(np.float32)
    x *= np.float32(2.0 / 255.0)
    x -= np.float32(1.0)
    return x


# ---------------------------------------------------------------- samples

def make_sample(record: Mapping, labels, rng: np.random.Generator | None = None, augment: bool = True,
                config: AugmentConfig | None = None) -> dict:
    """One patch record (PATCH_SCHEMA fields; ``image``, ``instance_map``, ``cell_ids`` and ``organ``
    needed) -> a training sample: ``image`` float32 (3, H, W) normalised, ``binary`` uint8 (H, W),
    ``hv`` float32 (2, H, W), ``type`` int64 (H, W) with -1 for Unknown nuclei, ``tissue`` int,
    and ``sample_id`` / ``patch_id`` when the record has them.

    ``labels``: a Series of class names indexed by cell id (this slide's), a mapping
    ``{sample_id: Series}``, or None (every nucleus Unknown).
    """
    img = decode_image(record["image"])
    inst = decode_instance_map(record["instance_map"])
    sid = record.get("sample_id")
    classes = instance_classes(record["cell_ids"], _labels_for(labels, sid))
    if augment:
        img, inst = _augment(img, inst, rng if rng is not None else np.random.default_rng(), config)
    out = targets(inst, classes)
    out["image"] = normalise(img)
    out["tissue"] = tissue_index(record.get("organ"))
    for key in ("sample_id", "patch_id"):
        if record.get(key) is not None:
            out[key] = str(record[key])
    return out


def patch_rng(seed: int, epoch: int, patch_id: str) -> np.random.Generator:
    """The generator of one patch's augmentation: fixed by (seed, epoch, patch id), whatever the batching."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF,
                                  zlib.crc32(str(patch_id).encode())])


def transform_batch(batch: Mapping[str, np.ndarray], labels, seed: int = 0, augment: bool = True,
                    config: AugmentConfig | None = None, epoch: int | Sequence[int] = 0,
                    keep_ids: bool = False) -> dict[str, np.ndarray]:
    """A numpy batch of patch records (Ray Data ``batch_format="numpy"`` or columns read with
    pyarrow) -> stacked training arrays: ``image`` (B, 3, H, W) float32, ``binary`` (B, H, W) int64,
    ``hv`` (B, 2, H, W) float32, ``type`` (B, H, W) int64, ``tissue`` (B,) int64; with
    ``keep_ids`` also ``sample_id`` / ``patch_id`` (B,) str. Each patch's augmentation is drawn
    from :func:`patch_rng` (``epoch`` may be one int or one per row)."""
    n = len(batch["image"])
    epochs = np.broadcast_to(np.asarray(epoch, np.int64), (n,))
    keys = [k for k in READ_COLUMNS if k in batch]
    cols: dict[str, list] = {k: [] for k in ("image", "binary", "hv", "type", "tissue", "sample_id", "patch_id")}
    for i in range(n):
        rec = {k: batch[k][i] for k in keys}
        pid = str(rec.get("patch_id", i))
        s = make_sample(rec, labels, patch_rng(seed, int(epochs[i]), pid), augment, config)
        for k in ("image", "binary", "hv", "type", "tissue"):
            cols[k].append(s[k])
        cols["sample_id"].append(str(rec.get("sample_id", "")))
        cols["patch_id"].append(pid)
    out = {"image": np.stack(cols["image"]) if n else np.zeros((0, 3, 0, 0), np.float32),
           "binary": np.stack(cols["binary"]).astype(np.int64) if n else np.zeros((0, 0, 0), np.int64),
           "hv": np.stack(cols["hv"]) if n else np.zeros((0, 2, 0, 0), np.float32),
           "type": np.stack(cols["type"]) if n else np.zeros((0, 0, 0), np.int64),
           "tissue": np.asarray(cols["tissue"], np.int64)}
    if keep_ids:
        out["sample_id"] = np.asarray(cols["sample_id"], dtype=object)
        out["patch_id"] = np.asarray(cols["patch_id"], dtype=object)
    return out


class TransformBatch:
    """Ray Data ``map_batches`` callable (an actor): loads each slide's label table once per worker
    (lazily) and applies :func:`transform_batch`. A patch's n-th visit on this worker uses epoch n,
    so a patch gets fresh augmentation every epoch."""

    def __init__(self, dataset_url: str, label_set_id: str | None = None, seed: int = 0, augment: bool = True,
                 config: AugmentConfig | None = None):
        self.labels = LabelLookup(dataset_url, label_set_id)
        self.seed, self.augment, self.config = seed, augment, config
        self._visits: Counter = Counter()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pids = [str(p) for p in batch["patch_id"]]
        epochs = [self._visits[p] for p in pids]
        self._visits.update(pids)
        return transform_batch(batch, self.labels, self.seed, self.augment, self.config, epoch=epochs)


# ---------------------------------------------------------------- Ray Data

def _arrow_paths(urls: list[str]):
    """(paths, filesystem) for ``ray.data.read_parquet``: plain paths locally, else a pyarrow
    PyFileSystem over the fsspec filesystem (s3:// etc.)."""
    if all(storage.is_local(u) for u in urls):
        return [storage.filesystem(u)[1] for u in urls], None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = storage.filesystem(urls[0])
    return [storage.filesystem(u)[1] for u in urls], PyFileSystem(FSSpecHandler(fs))


def shard_urls(dataset_url: str) -> list[str]:
    """URLs of the patch shards of the dataset's done slides."""
    return [storage.join(dataset_url, s["shard"]) for s in done_slides(dataset_url)]


def training_dataset(dataset_url: str, label_set_id: str | None = None, *, augment: bool = True, seed: int = 0,
                     shuffle_buffer: int | None = None, batch_size: int = 16, config: AugmentConfig | None = None,
                     num_cpus: float = 0.5, concurrency: int | tuple[int, int] = (1, 2)):
    """A Ray Dataset of training samples from the done slides of ``<dataset>/manifest.json``.

    Shards are read with ``ray.data.read_parquet`` (file order shuffled, then block order
    randomised), then ``map_batches(TransformBatch)`` decodes, joins labels, augments and computes
    targets on CPU actors (``num_cpus`` each: fractional, so that train workers keep CPUs on a
    small cluster). ``shuffle_buffer`` (rows), when given, also shuffles the still-encoded
    records globally (``random_shuffle``) before the transform; batch-level mixing is the
    consumer's ``ds.iter_torch_batches(batch_size=..., local_shuffle_buffer_size=...)``.
    Columns: image, binary, hv, type, tissue (see :func:`transform_batch`).
    """
    import ray.data

    urls = shard_urls(dataset_url)
    if not urls:
        raise ValueError(f"{dataset_url}: the manifest lists no done slides")
    paths, fs = _arrow_paths(urls)
    ds = ray.data.read_parquet(paths, filesystem=fs, shuffle=ray.data.FileShuffleConfig(seed=seed))
    ds = ds.select_columns(list(READ_COLUMNS))      # projected into the Parquet read by Ray's optimiser
    ds = ds.randomize_block_order(seed=seed)
    if shuffle_buffer:
        ds = ds.random_shuffle(seed=seed)
    return ds.map_batches(TransformBatch, fn_constructor_kwargs={
        "dataset_url": dataset_url, "label_set_id": label_set_id, "seed": seed, "augment": augment,
        "config": config}, batch_size=batch_size, batch_format="numpy", num_cpus=num_cpus, concurrency=concurrency)
