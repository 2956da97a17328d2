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

import cv2
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
        pos = labels.index.get_indexer(ids)     # -1 where the cell is not in the table
        values = labels.to_numpy(object)
        out[1:] = np.where(pos >= 0, values[np.maximum(pos, 0)] if len(values) else UNKNOWN, UNKNOWN)
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
_LOG256 = float(np.log(256.0))
_GREY = np.array([0.299, 0.587, 0.114])                                    # sums to 1
_NORM_LUT = np.arange(256, dtype=np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)  # normalise()'s ops


def _pixels(a: np.ndarray) -> np.ndarray:
    """(..., 3) -> contiguous (N, 1, 3): what cv2 reads as an N x 1 three-channel image."""
    return np.ascontiguousarray(a).reshape(-1, 1, 3)


#: -(outer(inv(V)[:, i], V[i])).T, i = H, E, residual: the jittered OD of a pixel row ``od`` is
#: ``od @ (s_H P_H + s_E P_E + P_res) + b_H V_H + b_E V_E`` (concentrations scaled and shifted).
_STAIN_PARTS = [-np.outer(_STAIN_INV[:, i].astype(np.float64), STAIN_VECTORS[i]).T for i in range(3)]


def _stain_matrix(scale: Sequence[float], shift: Sequence[float]) -> np.ndarray:
    """(3, 4) float32 for ``cv2.transform``: optical density -> minus the jittered optical density."""
    m = np.empty((3, 4))
    m[:, :3] = scale[0] * _STAIN_PARTS[0] + scale[1] * _STAIN_PARTS[1] + _STAIN_PARTS[2]
    m[:, 3] = -(shift[0] * STAIN_VECTORS[0].astype(np.float64) + shift[1] * STAIN_VECTORS[1])
    return m.astype(np.float32)


def _transmittance(rgb: np.ndarray, scale: Sequence[float], shift: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """exp(-jittered OD) of (..., 3) pixels as float32 (N, 1, 3), clipped to [1/256, 1] so that
    ``256 e - 1`` is the jittered RGB clipped to 0..255; and a scratch array of the same shape."""
    px = _pixels(rgb)
    od = cv2.LUT(px, _OD_LUT) if px.dtype == np.uint8 else -np.log((px.astype(np.float32) + 1.0) / 256.0)
    z = cv2.transform(od, _stain_matrix(scale, shift))
    np.clip(z, -_LOG256, 0.0, out=z)
    return cv2.exp(z, dst=z), od


def stain_jitter(rgb: np.ndarray, scale: Sequence[float], shift: Sequence[float]) -> np.ndarray:
    """H&E jitter of an (H, W, 3) image in 0..255 (uint8 or float): RGB -> optical density -> (H, E, residual)
    concentrations by the fixed stain vectors; H and E scaled by ``scale[0:2]`` and shifted by
    ``shift[0:2]``; back to RGB (float32, clipped to 0..255)."""
    rgb = np.asarray(rgb)
    x = _transmittance(rgb, scale, shift)[0] * np.float32(256.0) - np.float32(1.0)
    return np.clip(x, 0.0, 255.0, out=x).reshape(rgb.shape)


def colour_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Stain, brightness, contrast and saturation jitter of an RGB uint8 image (returns uint8).

    Draws, in this order: stain scale (2) and shift (2), brightness, contrast, saturation (each only
    when enabled). Applied as stain jitter (:func:`stain_jitter`), then brightness ``x * b``,
    contrast ``(x - mean) * c + mean``, saturation ``(x - grey) * s + grey``, rounded to uint8.
    After the stain step all three are one affine map ``y = c b S x + (1 - c) b mean(x)`` with
    ``S = s I + (1 - s) 1 grey^T``, so the image takes one LUT, two 3x4 colour transforms and one
    exp per pixel (in float32; equals the step-by-step float32 result to within 1 grey level).
    """
    stain = bool(cfg.stain_scale or cfg.stain_shift)
    if not (stain or cfg.brightness or cfg.contrast or cfg.saturation):
        return img
    if stain:
        scale = rng.uniform(1 - cfg.stain_scale, 1 + cfg.stain_scale, 2)
        shift = rng.uniform(-cfg.stain_shift, cfg.stain_shift, 2)
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness) if cfg.brightness else 1.0
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast else 1.0
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) if cfg.saturation else 1.0
    a = c * b * (s * np.eye(3) + (1 - s) * _GREY[None, :])
    if stain:
        src, dst = _transmittance(img, scale, shift)            # x = 256 e - 1
        mean = 256.0 * sum(cv2.mean(src)[:3]) / 3 - 1.0 if c != 1 else 0.0
        m = np.hstack([256.0 * a, ((1 - c) * b * mean - a.sum(1))[:, None]])
    else:
        src, dst = _pixels(img).astype(np.float32), None
        mean = sum(cv2.mean(src)[:3]) / 3 if c != 1 else 0.0
        m = np.hstack([a, np.full((3, 1), (1 - c) * b * mean)])
    y = cv2.transform(src, m.astype(np.float32), dst=dst)
    cv2.threshold(y, 0.0, 0.0, cv2.THRESH_TOZERO, dst=y)       # max(y, 0)
    return cv2.convertScaleAbs(y).reshape(img.shape)           # rounds half to even, saturates at 255


#: cv2.rotate codes of np.rot90(a, k, axes=(0, 1)) for k = 1, 2, 3
_ROTATE = (None, cv2.ROTATE_90_COUNTERCLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_CLOCKWISE)
_CV_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32,
                                            np.float64))


def _dihedral(a: np.ndarray, k: int, hflip: bool, vflip: bool) -> np.ndarray:
    """``np.rot90(a, k, axes=(0, 1))``, then ``[:, ::-1]`` if ``hflip``, then ``[::-1]`` if ``vflip``,
    as a contiguous array (no copy when that is the identity); one or two cv2 passes."""
    k %= 4
    if hflip and vflip:                          # both flips = rot180
        k, hflip, vflip = (k + 2) % 4, False, False
    if k == 2:                                   # rot180 = both flips; with one flip, the other one
        k, hflip, vflip = 0, not hflip, not vflip
    if not (k or hflip or vflip):
        return np.ascontiguousarray(a)
    if a.dtype not in _CV_DTYPES or a.ndim not in (2, 3) or (a.ndim == 3 and not 1 <= a.shape[2] <= 4):
        a = np.rot90(a, k, axes=(0, 1))
        a = a[:, ::-1] if hflip else a
        return np.ascontiguousarray(a[::-1] if vflip else a)
    a = np.ascontiguousarray(a)
    if (k, hflip, vflip) in ((1, False, True), (3, True, False)):
        return cv2.transpose(a).reshape(a.shape[1], a.shape[0], *a.shape[2:])
    if k:
        a = cv2.rotate(a, _ROTATE[k]).reshape(a.shape[1], a.shape[0], *a.shape[2:])
    if hflip or vflip:
        a = cv2.flip(a, -1 if hflip and vflip else 1 if hflip else 0).reshape(a.shape)
    return a


def _draw_geometric(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[int, bool, bool]:
    k = int(rng.integers(4)) if cfg.rot90 else 0
    return k, bool(rng.random() < cfg.p_hflip), bool(rng.random() < cfg.p_vflip)


def augment(image: np.ndarray, inst: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, instance map (H, W)) -> augmented copies, still aligned pixel for pixel.

    rot90 by k ~ U{0..3}, horizontal flip, vertical flip (the same for both arrays), then colour
    jitter of the image. Targets are to be computed from the returned instance map. (Colour
    jitter acts per pixel but for the image mean, which a permutation keeps, so it is computed
    before the geometric op, on the decoded image as it is.)
    """
    cfg = config or AugmentConfig()
    if image.shape[:2] != inst.shape:
        raise ValueError(f"image {image.shape} and instance map {inst.shape} differ in size")
    geo = _draw_geometric(rng, cfg)
    return _dihedral(colour_jitter(image, rng, cfg), *geo), _dihedral(inst, *geo)


_augment = augment


def normalise(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1]: ``(x / 255 - 0.5) / 0.5``, computed as
    ``float32(x) * float32(2 / 255) - 1`` (into ``out`` when given)."""
    if image.dtype != np.uint8:
        x = image.transpose(2, 0, 1).astype(np.float32)
        x *= np.float32(2.0 / 255.0)
        x -= np.float32(1.0)
        if out is None:
            return x
        out[...] = x
        return out
    shape = (image.shape[2], *image.shape[:2])
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(image))):
        cv2.LUT(plane, _NORM_LUT, dst=out[c])
    return out


# ---------------------------------------------------------------- samples

def _prepare(record: Mapping, labels, rng: np.random.Generator | None, augment: bool,
             config: AugmentConfig | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode, label join and augmentation of one record -> (RGB uint8 image, instance map, classes)."""
    img = decode_image(record["image"])
    inst = decode_instance_map(record["instance_map"])
    classes = instance_classes(record["cell_ids"], _labels_for(labels, record.get("sample_id")))
    if augment:
        img, inst = _augment(img, inst, rng if rng is not None else np.random.default_rng(), config)
    elif img.shape[:2] != inst.shape:
        raise ValueError(f"image {img.shape} and instance map {inst.shape} differ in size")
    return img, inst, classes


def make_sample(record: Mapping, labels, rng: np.random.Generator | None = None, augment: bool = True,
                config: AugmentConfig | None = None) -> dict:
    """One patch record (PATCH_SCHEMA fields; ``image``, ``instance_map``, ``cell_ids`` and ``organ``
    needed) -> a training sample: ``image`` float32 (3, H, W) normalised, ``binary`` uint8 (H, W),
    ``hv`` float32 (2, H, W), ``type`` int64 (H, W) with -1 for Unknown nuclei, ``tissue`` int,
    and ``sample_id`` / ``patch_id`` when the record has them.

    ``labels``: a Series of class names indexed by cell id (this slide's), a mapping
    ``{sample_id: Series}``, or None (every nucleus Unknown).
    """
    img, inst, classes = _prepare(record, labels, rng, augment, config)
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
    from :func:`patch_rng` (``epoch`` may be one int or one per row). The same values as stacking
    :func:`make_sample`'s, written straight into the batch arrays."""
    n = len(batch["image"])
    epochs = np.broadcast_to(np.asarray(epoch, np.int64), (n,))
    keys = [k for k in READ_COLUMNS if k in batch]
    out: dict[str, np.ndarray] = {}
    sids, pids = [], []
    for i in range(n):
        rec = {k: batch[k][i] for k in keys}
        pid = str(rec.get("patch_id", i))
        img, inst, classes = _prepare(rec, labels, patch_rng(seed, int(epochs[i]), pid), augment, config)
        if not out:
            h, w = inst.shape
            out = {"image": np.empty((n, 3, h, w), np.float32), "binary": np.empty((n, h, w), np.int64),
                   "hv": np.empty((n, 2, h, w), np.float32), "type": np.empty((n, h, w), np.int64),
                   "tissue": np.empty(n, np.int64)}
        elif inst.shape != out["type"].shape[1:]:
            raise ValueError(f"patch {pid}: size {inst.shape} differs from the batch's {out['type'].shape[1:]}")
        targets(inst, classes, out={k: out[k][i] for k in ("binary", "hv", "type")})
        normalise(img, out["image"][i])
        out["tissue"][i] = tissue_index(rec.get("organ"))
        sids.append(str(rec.get("sample_id", "")))
        pids.append(pid)
    if not n:
        out = {"image": np.zeros((0, 3, 0, 0), np.float32), "binary": np.zeros((0, 0, 0), np.int64),
               "hv": np.zeros((0, 2, 0, 0), np.float32), "type": np.zeros((0, 0, 0), np.int64),
               "tissue": np.zeros(0, np.int64)}
    if keep_ids:
        out["sample_id"] = np.asarray(sids, dtype=object)
        out["patch_id"] = np.asarray(pids, dtype=object)
    return out


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

def shard_urls(dataset_url: str) -> list[str]:
    """URLs of the patch shards of the dataset's done slides."""
    return [storage.join(dataset_url, s["shard"]) for s in done_slides(dataset_url)]


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
                     concurrency: int | tuple[int, int] = (1, 2), samples_per_epoch: int | None = None):
    """A Ray Dataset of training samples from the done slides of ``<dataset>/manifest.json``.

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
    urls = shard_urls(dataset_url)
    if not urls:
        raise ValueError(f"{dataset_url}: the manifest lists no done slides")
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
