"""Pictures people would rather look at than read: nuclei outlined by class, legends, panels."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stx_platform import storage
from stx_platform.taxonomy import CLASS_COLOURS


def outline_nuclei(img: np.ndarray, polygons: list[np.ndarray], classes: list[str] | np.ndarray,
                   offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0, width: int = 2) -> np.ndarray:
    """Copy of ``img`` with each polygon (vertices in source pixels) outlined in its class colour."""
    import cv2

    out = np.ascontiguousarray(img.copy())
    for poly, cls in zip(polygons, classes):
        if len(poly) < 3:
            continue
        pts = np.round((np.asarray(poly, np.float64) - offset) * scale * 16).astype(np.int32)
        cv2.polylines(out, [pts], True, CLASS_COLOURS.get(str(cls), (0, 0, 0)), width, cv2.LINE_AA, shift=4)
    return out


def outline_contours(img: np.ndarray, contours, classes, offset: tuple[float, float] = (0.0, 0.0),
                     scale: float = 1.0) -> np.ndarray:
    """:func:`outline_nuclei` for contours through pixel centres (integer = centre, as
    :func:`stx_platform.postprocess.instance_contours` gives them), mapped by ``offset`` and
    ``scale`` so that centres land on centres: ``u -> (u + 0.5 - offset) * scale - 0.5``."""
    shifted = [np.asarray(c, np.float64) + 0.5 - 0.5 / scale for c in contours]
    return outline_nuclei(img, shifted, list(classes), offset=offset, scale=scale, width=2 if scale >= 0.5 else 1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def legend(classes: list[str], counts: dict[str, int] | None = None, width: int = 260, font_size: int = 18
           ) -> np.ndarray:
    """A white legend panel: a colour swatch and a name (and count) per class."""
    row = font_size + 12
    im = Image.new("RGB", (width, row * len(classes) + 16), "white")
    d = ImageDraw.Draw(im)
    f = _font(font_size)
    for i, c in enumerate(classes):
        y = 8 + i * row
        d.rectangle([10, y + 2, 10 + font_size, y + 2 + font_size], fill=CLASS_COLOURS.get(c, (0, 0, 0)),
                    outline="black")
        text = c if counts is None else f"{c}  ({counts.get(c, 0)})"
        d.text((20 + font_size, y), text, fill="black", font=f)
    return np.asarray(im)


def caption(img: np.ndarray, text: str, font_size: int = 20) -> np.ndarray:
    """``img`` with a white caption strip on top."""
    h = font_size + 14
    im = Image.new("RGB", (img.shape[1], img.shape[0] + h), "white")
    im.paste(Image.fromarray(img), (0, h))
    ImageDraw.Draw(im).text((8, 6), text, fill="black", font=_font(font_size))
    return np.asarray(im)


def hstack(images: list[np.ndarray], pad: int = 8) -> np.ndarray:
    """Side by side, top-aligned, on white."""
    H = max(i.shape[0] for i in images)
    W = sum(i.shape[1] for i in images) + pad * (len(images) - 1)
    out = np.full((H, W, 3), 255, np.uint8)
    x = 0
    for i in images:
        out[: i.shape[0], x: x + i.shape[1]] = i[..., :3]
        x += i.shape[1] + pad
    return out


def save_png(url: str, img: np.ndarray) -> None:
    import io

    from stx_platform import storage

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    storage.write_bytes(url, buf.getvalue())


def figure_png(fig, dpi: int = 130) -> bytes:
    """A matplotlib figure as PNG bytes (and the figure closed)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def vstack(images: list[np.ndarray], pad: int = 8) -> np.ndarray:
    """One above the other, left-aligned, on white."""
    H = sum(i.shape[0] for i in images) + pad * (len(images) - 1)
    W = max(i.shape[1] for i in images)
    out = np.full((H, W, 3), 255, np.uint8)
    y = 0
    for i in images:
        out[y: y + i.shape[0], : i.shape[1]] = i[..., :3]
        y += i.shape[0] + pad
    return out


def read_image(url: str) -> np.ndarray:
    """A PNG, JPEG or TIFF (level 0 of its first series) read whole as RGB uint8 (H, W, 3)."""
    import io

    import tifffile
    from PIL import Image

    if not storage.exists(url):
        raise FileNotFoundError(f"{url}: no such image file")
    data = storage.read_bytes(url)
    try:
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            img = tifffile.imread(io.BytesIO(data), series=0, level=0)
        else:
            with Image.open(io.BytesIO(data)) as im:
                img = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL and tifffile raise many types on damaged files
        raise ValueError(f"{url}: not a readable PNG, JPEG or TIFF image ({type(e).__name__}: {e})") from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
        raise ValueError(f"{url}: expected an 8-bit RGB image, found shape {img.shape} dtype {img.dtype}")
    return np.ascontiguousarray(img[..., :3])
