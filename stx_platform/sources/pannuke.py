"""PanNuke fold reader (local, file:// or s3://), lazy per image.

Accepts a folder holding ``images.npy``, ``masks.npy`` and ``types.npy`` directly, or a fold as
released (``Fold 1/images/fold1/{images,types}.npy`` + ``Fold 1/masks/fold1/masks.npy``).
Arrays are read record by record from the ``.npy`` bytes (header parsed with numpy's own
format functions), so a 4 GB ``images.npy`` on s3 costs one ranged read per image. Object
(pickled) arrays are refused. ``masks.npy`` channels 0-4 hold instance ids of Neoplastic,
Inflammatory, Connective, Dead and Epithelial nuclei; channel 5 is background.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from stx_platform import storage
from stx_platform.errors import SampleError
from stx_platform.taxonomy import PANNUKE_CHANNELS


class LazyNpy:
    """Random access to the records (first-axis items) of a C-ordered ``.npy`` at a URL."""

    def __init__(self, url: str, label: str):
        self.url, self.label = url, label
        try:
            with storage.open_file(url) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                self.offset = f.tell()
        except FileNotFoundError:
            raise SampleError(None, label, "file not found") from None
        except ValueError as e:
            raise SampleError(None, label, f"not a .npy array ({e})") from None
        if dtype.hasobject:
            raise SampleError(None, label, "holds Python objects (pickled data); refusing to unpickle")
        if fortran:
            raise SampleError(None, label, "Fortran-ordered arrays are not supported")
        if len(shape) == 0:
            raise SampleError(None, label, "is a scalar, expected an array of records")
        self.shape, self.dtype = tuple(shape), dtype
        self.record_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        expected = self.offset + self.record_bytes * shape[0]
        actual = storage.size(url)
        if actual < expected:
            raise SampleError(None, label, f"truncated: {actual} bytes, the header promises {expected}")
        self._fh = None

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int | None = None) -> np.ndarray:
        stop = start + 1 if stop is None else stop
        if not 0 <= start < stop <= len(self):
            raise IndexError(f"{self.label}: records {start}:{stop} out of range (0..{len(self)})")
        if self._fh is None:
            self._fh = storage.open_file(self.url)
        self._fh.seek(self.offset + start * self.record_bytes)
        raw = self._fh.read((stop - start) * self.record_bytes)
        return np.frombuffer(raw, self.dtype).reshape((stop - start,) + self.shape[1:])

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fh"} | {"_fh": None}


@dataclass
class PanNukeItem:
    image: np.ndarray          # (256, 256, 3) uint8
    instances: np.ndarray      # (256, 256) int32, 0 = background, ids 1..n
    classes: dict[int, str]    # instance id -> PanNuke class name
    tissue: str


def _locate(url: str) -> dict[str, str]:
    direct = {n: storage.join(url, n) for n in ("images.npy", "masks.npy", "types.npy")}
    if all(storage.exists(u) for u in direct.values()):
        return direct
    found: dict[str, str] = {}
    for sub in ("images", "masks"):
        for fold in storage.listdir(storage.join(url, sub)):
            for name in ("images.npy", "types.npy", "masks.npy"):
                u = storage.join(url, sub, fold, name)
                if name not in found and storage.exists(u):
                    found[name] = u
    missing = [n for n in ("images.npy", "masks.npy", "types.npy") if n not in found]
    if missing:
        raise SampleError(None, url, f"not a PanNuke fold: missing {missing} (looked in the folder and in "
                                     "images/fold*/ and masks/fold*/)")
    return found


def split_mask(mask: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """One PanNuke mask (H, W, 6) -> instance map with ids 1..n and their classes."""
    inst = np.zeros(mask.shape[:2], np.int32)
    classes: dict[int, str] = {}
    k = 0
    for ch in range(5):
        layer = mask[..., ch]
        for v in np.unique(layer[layer > 0]):
            k += 1
            inst[layer == v] = k
            classes[k] = PANNUKE_CHANNELS[ch]
    return inst, classes


class PanNukeFold:
    """A PanNuke fold; ``fold[i]`` is a ``PanNukeItem``."""

    def __init__(self, url: str):
        self.url = str(url)
        paths = _locate(self.url)
        self.images = LazyNpy(paths["images.npy"], "images.npy")
        self.masks = LazyNpy(paths["masks.npy"], "masks.npy")
        try:
            self.types = np.load(io.BytesIO(storage.read_bytes(paths["types.npy"])), allow_pickle=False)
        except ValueError as e:
            raise SampleError(None, "types.npy", f"not a plain array of names ({e}); refusing to unpickle") from None
        n = len(self.images)
        if self.images.shape[1:] != (256, 256, 3):
            raise SampleError(None, "images.npy", f"expected (N, 256, 256, 3), found {self.images.shape}")
        if self.masks.shape != (n, 256, 256, 6):
            raise SampleError(None, "masks.npy", f"expected ({n}, 256, 256, 6) to match images.npy, found "
                                                 f"{self.masks.shape}")
        if self.types.shape != (n,):
            raise SampleError(None, "types.npy", f"expected {n} tissue names, found shape {self.types.shape}")
        if self.images.dtype.kind not in "uif" or self.masks.dtype.kind not in "uif":
            raise SampleError(None, self.url, "images and masks must be numeric arrays")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> PanNukeItem:
        img = self.images.read(i)[0]
        if img.dtype != np.uint8:  # the release stores float64 in 0..255
            if np.nanmin(img) < 0 or np.nanmax(img) > 255:
                raise SampleError(None, "images.npy", f"image {i} has values outside 0..255")
            img = np.round(img).astype(np.uint8)
        inst, classes = split_mask(self.masks.read(i)[0])
        return PanNukeItem(img, inst, classes, str(self.types[i]))
