"""Annotated H&E tiles in a folder (NuCLS, CellViT++'s examples, a lab's own): ``NAME.png`` or
``NAME.jpg`` with ``NAME_inst.npy`` (instance map, 0 = background) and optionally ``NAME_type.npy``
(per-pixel class codes), in the folder or its subfolders. Items are shaped as a PanNuke fold's,
resampled to the model's pixel size, so the same evaluation scores them.

Type codes name classes through ``type_names`` (code k -> ``type_names[k - 1]``; PanNuke's order
by default). Names that are not a nucleus class (NuCLS's "Non-Tumor") leave a nucleus unlabelled:
it counts for detection and segmentation, not for the type scores."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.predict import MODEL_MPP
from stx_platform.sources.pannuke import PanNukeItem
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER
from stx_platform.viz import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
UNLABELLED = "Unlabelled"


def _load_npy(url: str, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
    except ValueError as e:
        raise SampleError(None, url, f"{what}: not a plain numeric array ({e}); refusing to unpickle") from None


def _find(url: str) -> list[tuple[str, str, str | None, str]]:
    """(name, image url, type url or None, subfolder) of every image with an ``_inst.npy`` beside it."""
    found = []
    pending = [(url, "")]
    while pending:
        folder, sub = pending.pop()
        names = sorted(storage.listdir(folder))
        present = set(names)
        for n in names:
            path = storage.join(folder, n)
            stem, dot, ext = n.rpartition(".")
            if dot and f".{ext.lower()}" in IMAGE_SUFFIXES and f"{stem}_inst.npy" in present:
                typ = f"{stem}_type.npy"
                found.append((f"{sub}{stem}", path, storage.join(folder, typ) if typ in present else None,
                              storage.join(folder, f"{stem}_inst.npy")))
            elif not dot and storage.is_dir(path):
                pending.append((path, f"{sub}{n}/"))
    return sorted(found)


class TileFolder:
    """A folder of annotated tiles; ``tiles[i]`` is a :class:`PanNukeItem` at ``MODEL_MPP``
    (image resampled with area averaging, instance map with nearest neighbour; both padded with
    white / background to a multiple of 16 px for the model). ``names[i]`` is the tile's name."""

    def __init__(self, url: str, mpp: float = MODEL_MPP, type_names: Sequence[str] | None = None,
                 tissue: str | None = None):
        if not mpp > 0:
            raise ValueError(f"--mpp must be a positive number of um per pixel, got {mpp}")
        self.url, self.mpp = str(url), float(mpp)
        if not storage.exists(self.url) or not storage.is_dir(self.url):
            raise SampleError(None, self.url, "not a folder of tiles")
        self.entries = _find(self.url)
        if not self.entries:
            raise SampleError(None, self.url, "no tiles: expected NAME.png (or .jpg) with NAME_inst.npy beside it")
        self.type_names = tuple(type_names) if type_names else tuple(PANNUKE_TYPE_ORDER[1:])
        self.tissue = tissue or self.url.rstrip("/").rsplit("/", 1)[-1]
        self.names = [e[0] for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def _classes(self, inst: np.ndarray, types: np.ndarray | None, name: str) -> dict[int, str]:
        ids = np.unique(inst[inst > 0])
        if types is None:
            return {int(i): UNLABELLED for i in ids}
        if types.shape != inst.shape:
            raise SampleError(None, name, f"type map {types.shape} and instance map {inst.shape} differ in shape")
        out = {}
        for i in ids:
            codes = types[inst == i]
            codes = codes[codes > 0]
            k = int(np.bincount(codes.astype(np.int64)).argmax()) if codes.size else 0
            if k > len(self.type_names):
                raise SampleError(None, name, f"type code {k} but only {len(self.type_names)} type names "
                                              f"({', '.join(self.type_names)}); pass --type-names")
            label = self.type_names[k - 1] if k else UNLABELLED
            out[int(i)] = label if label in PANNUKE_TYPE_ORDER[1:] else UNLABELLED
        return out

    def __getitem__(self, i: int) -> PanNukeItem:
        import cv2

        name, img_url, type_url, inst_url = self.entries[i]
        rgb = read_image(img_url)
        inst = _load_npy(inst_url, "instance map")
        if inst.ndim != 2 or inst.dtype.kind not in "iu":
            raise SampleError(None, inst_url, f"expected a 2-D integer instance map, got {inst.dtype} {inst.shape}")
        if inst.shape != rgb.shape[:2]:
            raise SampleError(None, inst_url, f"instance map {inst.shape} and image {rgb.shape[:2]} differ in size")
        types = _load_npy(type_url, "type map") if type_url else None
        classes = self._classes(inst, types, type_url or inst_url)
        inst = inst.astype(np.int32)
        if not math.isclose(self.mpp, MODEL_MPP, rel_tol=1e-6):
            k = self.mpp / MODEL_MPP
            size = (max(1, round(rgb.shape[1] * k)), max(1, round(rgb.shape[0] * k)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
            inst = cv2.resize(inst, size, interpolation=cv2.INTER_NEAREST)
            classes = {j: c for j, c in classes.items() if (inst == j).any()}
        h, w = inst.shape
        ph, pw = -h % 16, -w % 16
        if ph or pw:
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), constant_values=255)
            inst = np.pad(inst, ((0, ph), (0, pw)))
        return PanNukeItem(np.ascontiguousarray(rgb, np.uint8), inst, classes, self.tissue)
