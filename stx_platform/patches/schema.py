"""THE Arrow schema of a patch record, and the encoders of its image and instance map.

One row = one patch: where it was cut (``x``, ``y``, ``width_l0``, ``height_l0`` in level-0
pixels of the slide), at which resolution (``mpp`` of the patch, ``slide_mpp``), the encoded RGB
``image``, the encoded ``instance_map`` (H x W, 0 = background, 1..n = nucleus instances),
``cell_ids`` (entry i-1 is the slide's cell id of instance i, so labels join by cell id and a
new label set never re-cuts images) and ``touches_border`` (instance i's nucleus is cut by the
patch edge). The config that cut a build travels in the schema metadata (``stx_patch_config``).

Encodings, chosen by ``bench/patch_codecs.py``: 200 patches of 256 x 256 px at 0.25 um/px cut
from a synthetic 0.2125 um/px breast slide (4,000 cells; 20 instances per patch on average),
one core, encode/decode CPU time per patch (best of 3 passes; a 2-core machine shared with other
jobs, so compare rows, not machines). The synthetic H&E carries per-pixel noise as a scan does;
in brackets the same on the 15 real NuCLS H&E tiles (shared/data/real, 256 px crops).

    image                      bytes/patch         encode us       decode us      PSNR (worst patch)
    PNG Sub + libdeflate 1 (*)  88,412 (126,198)   1,208 (1,712)    470 (532)     lossless
    PNG Sub + libdeflate 3      85,338 (128,061)   2,221 (2,248)    366 (541)     lossless
    PNG Sub + libdeflate 6      83,083 (126,192)   4,379 (2,689)    369 (562)     lossless
    PNG cv2 default (earlier)   90,787 (126,488)   2,507 (2,245)    621 (546)     lossless
    PNG cv2 compression 1       88,140 (117,878)   4,136 (4,366)  2,176 (2,352)   lossless
    WebP lossless, method 0     74,132 (101,790)   2,578 (1,772)  1,017 (998)     lossless
    QOI                        101,866 (148,457)     556 (557)      478 (371)     lossless
    JPEG q90                    13,003 (18,751)      189 (190)      228 (259)     38.6 dB
    JPEG q95                    18,662 (26,784)      196 (218)      257 (307)     40.8 dB
    raw + zstd                 109,984 (182,499)   1,289 (466)      271 (136)     lossless

    instance map             bytes/patch  encode us  decode us
    PNG 16-bit                     2,900        320        469
    PNG 8-bit (< 256 ids)          2,632        186        338
    raw int32 + zlib               1,907      1,024         61
    raw uint8/16 + zlib            1,456        383         49
    raw uint8/16 + zstd (*)        1,429         85         45

- ``PatchConfig.image_format`` picks the image codec; the choice travels in every record
  (``image_format``) and in the shard's config metadata, and :func:`decode_image` reads all
  three by their signature. Cutting a whole shard (``bench/build.py --baseline 3a0d2c6``, one
  core, medians of 3 turns, two runs) runs at 257-260 patches/s with PNG, 290-312 with QOI and
  356-359 with JPEG q95 (3a0d2c6 in the same runs: 128-133 with PNG, 188-197 with JPEG), at
  84.4 / 92.0 / 18.5 kB per patch. Per PNG patch (cProfile, CPU time) about 1.5 ms go to
  decoding the slide's LZW tiles (1.3 tiles of ~1.0 ms), 1.2-1.3 ms to the PNG and 0.5 ms to
  resampling, which leaves PNG short of 360 patches/s/core on this machine.
- Images default to **PNG**: lossless, so a patch holds exactly the slide's pixels and
  re-cutting is reproducible bit for bit; scanned WSIs are usually JPEG-compressed already, and
  a second lossy pass adds artefacts at the nucleus edges the model learns (CellViT's own
  PanNuke preparation also stores PNG); and any image tool reads it. :func:`encode_image`
  writes the PNG itself: every row Sub-filtered (as cv2's default does) and one IDAT deflated
  by libdeflate at level 1 (:data:`PNG_LEVEL`; ``png_compression`` picks 0..12). Against cv2's
  default settings, which wrote earlier shards (their pixels are the same), that is 2.1x faster
  to encode for 3% fewer bytes on the synthetic patches, 1.3x faster for as many bytes on the
  NuCLS tiles, and quicker to decode; levels 3 and 6 cost 1.3-3.6x the encode time for at
  most 6% fewer bytes (none on the NuCLS tiles), so level 1. Not used: Paeth-filtered rows
  (6% fewer bytes on the synthetic patches, 12% on the NuCLS tiles, at libdeflate 1) would
  need a per-pixel decoder instead of the running sum below; lossless WebP (16-19% fewer
  bytes) takes ~2x PNG's decode time.
  ``"qoi"`` is the fast lossless switch: the same pixels, 2.2-3.1x faster to encode than PNG,
  15% more bytes here and 18% on the NuCLS tiles. ``"jpeg"`` (libjpeg-turbo through
  imagecodecs, the bytes cv2 writes; q95 by ``jpeg_quality``) is the switch when storage,
  bandwidth or cutting time matter more than exactness: 4.6x fewer bytes (~84 GB vs ~18 GB
  per million patches) and the fastest cut. Its effect on training is not shown to be nil,
  so it is not the default: the same 771 patches of the embedded default set, PNG vs JPEG q95
  shards, preset tiny for 5 epochs, seeds 0 and 1, scored on the real NuCLS
  tiles: bPQ 0.442 / 0.497 with PNG vs 0.480 / 0.405 with JPEG, detection F1 0.711 / 0.764 vs
  0.758 / 0.632 (synthetic PanNuke fold, last epoch: bPQ 0.593 / 0.648 vs 0.577 / 0.519). The
  seed-to-seed spread is as large as the codec difference, so this small model neither shows
  a cost nor rules one out; JPEG's two-seed mean is the lower on each of these scores.
- :func:`decode_image` reads the PNGs :func:`encode_image` writes (8-bit RGB, rows Sub-filtered)
  itself: libdeflate (imagecodecs) into the known size, then a running sum along each row, ~0.55 ms
  per 256 px patch instead of cv2's ~1.2 ms (inflating is most of it); JPEGs and QOIs decode
  through imagecodecs, other PNGs through cv2.
- Instance maps default to **raw + zstd (level 3) in the smallest dtype** (uint8 up to 255 ids,
  uint16 up to 65,535, else int32) after a 14-byte ``STXI`` header (version = payload codec:
  1 zlib, 2 zstd; dtype, height, width): as small as zlib and 4.5x faster to write. Shards
  written before zstd (version 1, zlib) and PNG maps (8/16-bit) are read back; the kinds are
  told apart by their first bytes (PNG signature or ``STXI`` + version), so decoding needs no
  side channel.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable

import cv2
import numpy as np
import pyarrow as pa

from stx_platform.errors import SampleError

try:
    from imagecodecs import deflate_decode as _deflate_decode
    from imagecodecs import delta_decode as _delta_decode
except ImportError:                               # decoding falls back to zlib / cv2
    _deflate_decode = _delta_decode = None
try:  # libdeflate: PNG's zlib stream at ~2x zlib's speed for as many bytes
    from imagecodecs import deflate_crc32 as _crc32
    from imagecodecs import deflate_encode as _deflate_encode
    from imagecodecs import delta_encode as _delta_encode
except ImportError:                               # PNGs are then written by cv2
    _crc32 = _deflate_encode = _delta_encode = None
try:  # libjpeg-turbo through imagecodecs: the same bytes and pixels as cv2's, without the BGR copy
    from imagecodecs import jpeg8_decode as _jpeg_decode
    from imagecodecs import jpeg8_encode as _jpeg_encode
except ImportError:
    _jpeg_decode = _jpeg_encode = None
try:
    from imagecodecs import qoi_decode as _qoi_decode
    from imagecodecs import qoi_encode as _qoi_encode
except ImportError:
    _qoi_decode = _qoi_encode = None
try:
    from imagecodecs import zstd_decode as _zstd_decode
    from imagecodecs import zstd_encode as _zstd_encode
except ImportError:
    _zstd_decode = _zstd_encode = None

#: Schema version written in the metadata; bump when a field changes meaning.
SCHEMA_VERSION = "1"
META_VERSION = b"stx_patch_schema_version"
META_CONFIG = b"stx_patch_config"
META_CONFIG_HASH = b"stx_patch_config_hash"

IMAGE_FORMATS = ("png", "jpeg", "qoi")

PATCH_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("organ", pa.string(), nullable=False),
        pa.field("patch_id", pa.string(), nullable=False),          # f"{sample_id}_{x}_{y}"
        pa.field("x", pa.int32(), nullable=False),                  # origin, level-0 px of the slide
        pa.field("y", pa.int32(), nullable=False),
        pa.field("width_l0", pa.int32(), nullable=False),           # extent in level-0 px
        pa.field("height_l0", pa.int32(), nullable=False),
        pa.field("mpp", pa.float32(), nullable=False),              # um per patch pixel
        pa.field("slide_mpp", pa.float32(), nullable=False),        # um per level-0 pixel
        pa.field("size", pa.int16(), nullable=False),               # patch side, px
        pa.field("image", pa.binary(), nullable=False),             # encoded RGB (image_format)
        pa.field("image_format", pa.string(), nullable=False),      # one of IMAGE_FORMATS
        pa.field("instance_map", pa.binary(), nullable=False),      # encode_instance_map()
        pa.field("cell_ids", pa.list_(pa.field("item", pa.string(), nullable=False)), nullable=False),
        pa.field("touches_border", pa.list_(pa.field("item", pa.bool_(), nullable=False)), nullable=False),
        pa.field("nucleus_count", pa.int32(), nullable=False),      # == len(cell_ids)
        pa.field("tissue_fraction", pa.float32(), nullable=False),
    ],
    metadata={META_VERSION: SCHEMA_VERSION.encode()},
)

FIELDS = tuple(PATCH_SCHEMA.names)

#: Parquet columns a shard writes dictionary-encoded: all but the encoded image and instance map,
#: whose values (~88 kB and ~1.4 kB) never repeat; hashing them for a dictionary that the writer
#: then drops took ~0.13 ms a patch, 70% of the Parquet write. The records read back the same.
DICTIONARY_COLUMNS = tuple(f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name
                           for f in PATCH_SCHEMA if f.name not in ("image", "instance_map"))


def parquet_options() -> dict:
    """``pq.ParquetWriter`` / ``pq.write_table`` settings of a patch shard: no compression (the
    image and map are compressed already), dictionaries only where values repeat."""
    return {"compression": "none", "use_dictionary": list(DICTIONARY_COLUMNS)}


def schema_for(config=None) -> pa.Schema:
    """PATCH_SCHEMA with the cutting config (JSON and hash) in its metadata."""
    if config is None:
        return PATCH_SCHEMA
    meta = dict(PATCH_SCHEMA.metadata)
    meta[META_CONFIG] = config.to_json().encode()
    meta[META_CONFIG_HASH] = config.config_hash().encode()
    return PATCH_SCHEMA.with_metadata(meta)


def config_from_schema(schema: pa.Schema):
    """The PatchConfig stored in a patch table's schema metadata (None when absent)."""
    from stx_platform.patches.config import PatchConfig

    raw = (schema.metadata or {}).get(META_CONFIG)
    return None if raw is None else PatchConfig.model_validate(json.loads(raw))


# ---------------------------------------------------------------- images

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_JPEG_SIG = b"\xff\xd8\xff"
_QOI_SIG = b"qoif"
_QOI_END = b"\x00" * 7 + b"\x01"
_PNG_CHUNK = struct.Struct(">I4s")
_PNG_IHDR = struct.Struct(">IIBBBBB")


#: libdeflate level of the PNGs :func:`encode_image` writes (see the module docstring)
PNG_LEVEL = 1


def _png_chunk(kind: bytes, body) -> list:
    """A PNG chunk as the pieces to join (length, type, body, CRC): the body is not copied here."""
    return [struct.pack(">I", len(body)) + kind, body, struct.pack(">I", _crc32(body, _crc32(kind)))]


def _png_sub(rgb: np.ndarray, level: int) -> bytes:
    """8-bit RGB PNG with every row Sub-filtered (the byte minus the same channel's byte to its
    left), one IDAT compressed by libdeflate at ``level``: what :func:`_png_rgb8` reads fast.
    The compressed stream is copied once, into the joined file."""
    h, w, _ = rgb.shape
    rows = np.empty((h, 3 * w + 1), np.uint8)
    rows[:, 0] = 1
    _delta_encode(rgb, axis=1, out=rows[:, 1:].reshape(h, w, 3))
    return b"".join([_PNG_SIG, *_png_chunk(b"IHDR", _PNG_IHDR.pack(w, h, 8, 2, 0, 0, 0)),
                     *_png_chunk(b"IDAT", _deflate_encode(rows, level=level)), *_png_chunk(b"IEND", b"")])


def encode_image(rgb: np.ndarray, image_format: str = "png", quality: int = 95,
                 png_compression: int | None = None) -> bytes:
    """RGB uint8 (H, W, 3) -> PNG (lossless; rows Sub-filtered, libdeflate at ``png_compression``,
    default :data:`PNG_LEVEL`, 0..12), JPEG (libjpeg-turbo at ``quality``) or QOI (lossless) bytes."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {image_format!r} (expected one of {IMAGE_FORMATS})")
    if image_format == "qoi":
        if _qoi_encode is None:
            raise ValueError("QOI images need imagecodecs with QOI support")
        return bytes(_qoi_encode(np.ascontiguousarray(rgb)))
    if image_format == "jpeg" and _jpeg_encode is not None:
        return bytes(_jpeg_encode(np.ascontiguousarray(rgb), level=int(quality)))
    level = PNG_LEVEL if png_compression is None else int(png_compression)
    if image_format == "png" and _deflate_encode is not None:
        if not 0 <= level <= 12:
            raise ValueError(f"png_compression must lie in 0..12, got {level}")
        return _png_sub(np.ascontiguousarray(rgb), level)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if image_format == "png":
        params = [] if png_compression is None else [cv2.IMWRITE_PNG_COMPRESSION, min(level, 9)]
        ok, buf = cv2.imencode(".png", bgr, params)
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cv2 could not encode a {rgb.shape} image as {image_format}")
    return buf.tobytes()


_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _inflate(data, size: int) -> bytes:
    """zlib stream -> exactly ``size`` bytes (libdeflate into a buffer of known size: ~1.7x zlib's speed)."""
    if _deflate_decode is not None:
        raw = _deflate_decode(data, out=size)
    else:
        raw = zlib.decompress(data, bufsize=size)
    if len(raw) != size:
        raise ValueError(f"inflated to {len(raw)} bytes, expected {size}")
    return raw


def _png_rgb8(data: memoryview, out: np.ndarray | None = None) -> np.ndarray | None:
    """Fast path for the PNGs :func:`encode_image` writes: 8-bit RGB, not interlaced, rows filtered
    None or Sub (cv2's default). Inflates into the known size and undoes Sub (a running sum mod 256
    along each row), into ``out`` when every row is Sub-filtered and ``out`` fits. None for any
    other PNG, or one it cannot read, which cv2 then decodes."""
    if _delta_decode is None:
        return None
    ihdr, idat, pos = None, [], len(_PNG_SIG)
    while pos + 12 <= len(data):
        n, kind = _PNG_CHUNK.unpack_from(data, pos)
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR" and n == _PNG_IHDR.size:
            ihdr = _PNG_IHDR.unpack(body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif not kind[0] & 0x20:                 # another critical chunk (PLTE): not ours
            return None
        pos += 12 + n
    if ihdr is None or not idat or ihdr[2:] != (8, 2, 0, 0, 0):
        return None
    w, h = ihdr[0], ihdr[1]
    try:
        raw = _inflate(idat[0] if len(idat) == 1 else b"".join(idat), h * (3 * w + 1))
    except (ValueError, RuntimeError, MemoryError, zlib.error):    # cv2 says what is wrong
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, 3 * w + 1)
    sub = rows[:, 0] == 1
    if ((rows[:, 0] != 0) & ~sub).any():       # Up, Average or Paeth rows
        return None
    px = rows[:, 1:].reshape(h, w, 3)
    if sub.all():
        fits = out is not None and out.shape == px.shape and out.dtype == np.uint8 and out.flags.c_contiguous
        return _delta_decode(px, axis=1, out=out if fits else None)
    out = px.copy()
    if sub.any():
        out[sub] = _delta_decode(np.ascontiguousarray(out[sub]), axis=1)
    return out


def decode_image(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """PNG, JPEG or QOI bytes (recognised by their signature) -> RGB uint8 (H, W, 3). With ``out``
    (a C-contiguous uint8 array, e.g. a row of a batch) the PNGs :func:`encode_image` writes are
    decoded into it when the size fits, saving a copy; the result is ``out`` only then, so a
    caller checks ``result is out``."""
    data = memoryview(data)
    head = bytes(data[:8])
    if head.startswith(_QOI_SIG):
        if _qoi_decode is None:
            raise ValueError("QOI patch images need imagecodecs with QOI support")
        if bytes(data[-8:]) != _QOI_END:  # the decoder does not notice a truncated stream itself
            raise ValueError("patch image could not be decoded (truncated QOI: no end marker)")
        try:
            rgb = _qoi_decode(data)
        except Exception as e:  # imagecodecs raises its own QoiError
            raise ValueError(f"patch image could not be decoded (truncated or corrupt QOI: {e})") from None
        return rgb if rgb.shape[-1] == 3 else np.ascontiguousarray(rgb[..., :3])
    if not (head.startswith(_PNG_SIG) or head.startswith(_JPEG_SIG)):
        raise ValueError("patch image is neither PNG, JPEG nor QOI")
    if head.startswith(_PNG_SIG):
        rgb = _png_rgb8(data, out)
        if rgb is not None:
            return rgb
    elif _jpeg_decode is not None:
        try:
            rgb = _jpeg_decode(data)
        except Exception:  # noqa: BLE001 - cv2 below reads it or says it is corrupt
            rgb = None
        if rgb is not None and rgb.ndim == 3 and rgb.shape[2] == 3:
            return rgb
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR if _IMREAD_RGB is None else _IMREAD_RGB)
    if img is None:
        raise ValueError("patch image could not be decoded (truncated or corrupt)")
    return np.ascontiguousarray(img[..., ::-1]) if _IMREAD_RGB is None else img


# ---------------------------------------------------------------- instance maps

_RAW_MAGIC = b"STXI"
_RAW_HEADER = struct.Struct("<4sBcII")  # magic, version (= payload codec), numpy dtype char (B/H/i), height, width
_RAW_DTYPES = {b"B": np.dtype("<u1"), b"H": np.dtype("<u2"), b"i": np.dtype("<i4")}
_RAW_VERSIONS = {"zlib": 1, "zstd": 2}
#: default instance-map codec: zstd (level 3) when imagecodecs has it, else zlib (level 6)
MAP_METHOD = "zstd" if _zstd_encode is not None else "zlib"


def _smallest_dtype(max_id: int) -> np.dtype:
    if max_id < 256:
        return np.dtype(np.uint8)
    if max_id < 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def encode_instance_map(imap: np.ndarray, method: str | None = None, dtype=None, level: int | None = None) -> bytes:
    """Lossless H x W integer map (0 = background, 1..n) -> bytes; :func:`decode_instance_map`
    reads every variant back, recognising it by its first bytes.

    ``method='zstd'`` (the default, :data:`MAP_METHOD`) or ``'zlib'``: a 14-byte ``STXI`` header
    (version = payload codec: 1 zlib, 2 zstd; dtype, height, width), then the compressed
    little-endian array in the smallest of uint8 / uint16 / int32 that holds the ids (``dtype``
    forces a wider one); ``level`` defaults to 3 (zstd) / 6 (zlib). ``method='png'``: an 8-bit PNG
    when the largest id < 256, else 16-bit; maps with ids >= 65,536 fall back to the default.
    """
    method = method or MAP_METHOD
    imap = np.asarray(imap)
    if imap.ndim != 2 or imap.dtype.kind not in "iu":
        raise ValueError(f"expected a 2-D integer instance map, got {imap.dtype} {imap.shape}")
    lo = int(imap.min()) if imap.size else 0
    hi = int(imap.max()) if imap.size else 0
    if lo < 0 or hi > np.iinfo(np.int32).max:
        raise ValueError(f"instance ids must lie in 0..2^31-1, found {lo}..{hi}")
    dt = _smallest_dtype(hi)
    if dtype is not None:
        forced = np.dtype(dtype)
        if forced.char not in "BHi":
            raise ValueError(f"instance map dtype must be uint8, uint16 or int32, not {forced}")
        if forced.itemsize < dt.itemsize:
            raise ValueError(f"ids up to {hi} do not fit {forced}")
        dt = forced
    if method == "png" and dt != np.int32:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(imap.astype(dt, copy=False)))
        if not ok:
            raise ValueError(f"cv2 could not encode a {imap.shape} instance map as PNG")
        return buf.tobytes()
    if method == "png":
        method = MAP_METHOD
    if method not in _RAW_VERSIONS:
        raise ValueError(f"unknown instance map method {method!r} (expected 'zstd', 'zlib' or 'png')")
    if method == "zstd" and _zstd_encode is None:
        raise ValueError("zstd instance maps need imagecodecs with zstd support")
    arr = np.ascontiguousarray(imap.astype(dt.newbyteorder("<"), copy=False))
    h, w = arr.shape
    head = _RAW_HEADER.pack(_RAW_MAGIC, _RAW_VERSIONS[method], dt.char.encode(), h, w)
    if method == "zstd":
        return head + bytes(_zstd_encode(arr.tobytes(), level=3 if level is None else level))
    return head + zlib.compress(arr.tobytes(), 6 if level is None else level)


def decode_instance_map(data: bytes, dtype=np.int32) -> np.ndarray:
    """Bytes from :func:`encode_instance_map` (any version: zlib shards from before zstd too) -> (H, W)
    in ``dtype``; ``dtype=None`` keeps the stored one (the smallest that holds the ids: the ingest
    moves and reads a uint8 map 4x faster than an int32 one)."""
    data = memoryview(data)
    head = bytes(data[:_RAW_HEADER.size])
    if head.startswith(_PNG_SIG):
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 2:
            raise ValueError("instance map PNG could not be decoded (truncated, corrupt or not single-channel)")
        return arr if dtype is None else arr.astype(dtype)
    if head.startswith(_RAW_MAGIC) and len(head) == _RAW_HEADER.size:
        _, version, code, h, w = _RAW_HEADER.unpack(head)
        if version not in _RAW_VERSIONS.values() or code not in _RAW_DTYPES:
            raise ValueError(f"unsupported instance map encoding (version {version}, dtype {code!r})")
        dt = _RAW_DTYPES[code]
        size = h * w * dt.itemsize
        try:
            if version == 1:
                raw = _inflate(data[_RAW_HEADER.size:], size)
            elif _zstd_decode is None:
                raise ValueError("zstd instance maps need imagecodecs with zstd support")
            else:
                raw = _zstd_decode(data[_RAW_HEADER.size:], out=size)
                if len(raw) != size:
                    raise ValueError(f"decompressed to {len(raw)} bytes, expected {size}")
        except Exception as e:  # zlib.error, imagecodecs' ZstdError, a short buffer
            raise ValueError(f"instance map could not be decompressed to {h} x {w} x {dt.itemsize} bytes ({e})") \
                from None
        arr = np.frombuffer(raw, dt).reshape(h, w)
        return arr.copy() if dtype is None else arr.astype(dtype)
    raise ValueError("instance map is neither PNG nor an STXI blob")


# ---------------------------------------------------------------- tables

def _problem(rec: dict, i: int, what: str) -> SampleError:
    sid = rec.get("sample_id") if isinstance(rec, dict) else None
    pid = rec.get("patch_id") if isinstance(rec, dict) else None
    return SampleError(sid if isinstance(sid, str) else None, None,
                       f"patch record {i}" + (f" ({pid})" if isinstance(pid, str) else "") + f": {what}")


def validate_record(rec: dict, i: int = 0) -> None:
    """Checks Arrow's conversion does not make: exact field set, no nulls, consistent lists."""
    if not isinstance(rec, dict):
        raise _problem({}, i, f"is a {type(rec).__name__}, not a dict")
    keys = set(rec)
    missing, extra = [f for f in FIELDS if f not in keys], sorted(keys - set(FIELDS))
    if missing or extra:
        raise _problem(rec, i, f"fields differ from PATCH_SCHEMA (missing {missing}, unexpected {extra})")
    nulls = [f for f in FIELDS if rec[f] is None]
    if nulls:
        raise _problem(rec, i, f"null values in {nulls}")
    if rec["image_format"] not in IMAGE_FORMATS:
        raise _problem(rec, i, f"image_format {rec['image_format']!r} is not one of {IMAGE_FORMATS}")
    try:
        n_ids, n_border = len(rec["cell_ids"]), len(rec["touches_border"])
    except TypeError:
        raise _problem(rec, i, "cell_ids and touches_border must be lists") from None
    if not (n_ids == n_border == rec["nucleus_count"]):
        raise _problem(rec, i, f"{n_ids} cell_ids, {n_border} touches_border flags and nucleus_count "
                               f"{rec['nucleus_count']!r} must agree")
    if None in rec["cell_ids"] or None in rec["touches_border"]:  # C-level scans (genexprs: 0.05 ms a patch)
        raise _problem(rec, i, "null entries in cell_ids or touches_border")


def records_to_table(records: Iterable[dict], config=None) -> pa.Table:
    """Patch record dicts -> a table with exactly PATCH_SCHEMA (plus ``config`` in its metadata).

    Raises :class:`SampleError` naming the sample and record for a wrong field set, a null, a
    value of the wrong type or range, or inconsistent per-instance lists.
    """
    records = list(records)
    for i, rec in enumerate(records):
        validate_record(rec, i)
    schema = schema_for(config)
    try:
        return pa.Table.from_pylist(records, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
        # find the culprit for the message
        for i, rec in enumerate(records):
            try:
                pa.Table.from_pylist([rec], schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e1:
                raise _problem(rec, i, f"does not match PATCH_SCHEMA ({e1})") from None
        raise SampleError(None, None, f"patch records do not match PATCH_SCHEMA ({e})") from None
