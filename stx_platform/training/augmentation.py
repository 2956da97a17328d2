"""Augmentation of a training patch: geometric ops applied alike to the image and its instance
map (rot90, flips), CellViT's image-quality and shape ops from albumentations (downscale, blur,
Gaussian noise, zoom blur, random-sized crop, elastic warp; off unless given a probability), then
colour on the image only (H&E stain jitter in optical density, in the fixed reference stain basis
or in each patch's own Macenko basis, optionally with the stain vectors tilted; brightness,
contrast, saturation; fused into one colour transform, drawn on the CPU and applied by torch on
the train worker's device), and the model's input normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from stx_platform import stain


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
    # the stain basis the concentrations are taken in: "reference" (Ruifrok's fixed vectors, as
    # Tellez et al.'s HED jitter) or "macenko" (each patch's own, estimated; the reference where
    # the patch cannot give them); and the vectors' re-mix: each of H and E turned by up to this
    # many degrees before the image is put back together (the stain's hue varies, not only its amount)
    stain_basis: str = "reference"
    stain_tilt: float = 0.0
    # CellViT's image-quality and shape ops, each with its probability (CellViT's PanNuke recipe in
    # :meth:`cellvit`); the crop and the warp move the instance map too (nearest neighbour)
    p_downscale: float = 0.0    # to half resolution and back (nearest), as a lower-resolution scan
    p_blur: float = 0.0         # box blur, odd kernel 3..9 px, as an out-of-focus region
    p_noise: float = 0.0        # Gaussian noise per channel, std up to sqrt(50) grey levels
    p_zoom_blur: float = 0.0    # zoom blur up to 1.05x
    p_sized_crop: float = 0.0   # a square of 1/2..1 the side, resized back: nuclei up to 2x larger
    p_elastic: float = 0.0      # elastic warp (alpha 120, sigma 6: about 1.6 px mean, 6 px most)

    def geometric_only(self) -> AugmentConfig:
        """rot90 and the flips only."""
        return AugmentConfig(self.rot90, self.p_hflip, self.p_vflip, 0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self):
        if self.stain_basis not in STAIN_BASES:
            raise ValueError(f"stain_basis must be one of {STAIN_BASES}, got {self.stain_basis!r}")

    @classmethod
    def cellvit(cls, **overrides) -> AugmentConfig:
        """CellViT's PanNuke training recipe for the albumentations ops (downscale 0.15, blur 0.2,
        noise 0.25, zoom blur 0.1, random-sized crop 0.1, elastic 0.2), with this module's colour
        jitter in place of its ColorJitter; superpixels (p 0.1 there) are left out."""
        return replace(cls(p_downscale=0.15, p_blur=0.2, p_noise=0.25, p_zoom_blur=0.1, p_sized_crop=0.1,
                           p_elastic=0.2), **overrides)

    def quality_ops(self) -> bool:
        """Whether any albumentations op is on (else :func:`augment` never imports the library)."""
        return any((self.p_downscale, self.p_blur, self.p_noise, self.p_zoom_blur, self.p_sized_crop,
                    self.p_elastic))


STAIN_BASES = ("reference", "macenko")

#: Reference stain vectors (optical density, rows H, E, residual; Ruifrok & Johnston 2001), unit rows.
STAIN_VECTORS = stain.RUIFROK.astype(np.float32)
_STAIN_INV = np.linalg.inv(STAIN_VECTORS.astype(np.float64)).astype(np.float32)
_REF64, _INV64 = STAIN_VECTORS.astype(np.float64), _STAIN_INV.astype(np.float64)
_LOG256 = float(np.log(256.0))
_GREY = np.array([0.299, 0.587, 0.114])                                    # sums to 1
_NORM_LUT = np.arange(256, dtype=np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)  # normalise()'s ops


def _stain_matrix(scale: Sequence[float], shift: Sequence[float], v_in: np.ndarray | None = None,
                  v_out: np.ndarray | None = None) -> np.ndarray:
    """(3, 4) float32: optical density -> minus the jittered optical density, ``z = M[:, :3] od +
    M[:, 3]``. Concentrations are taken in the basis ``v_in`` (rows H, E, residual; the reference
    when None) and put back with ``v_out`` (``v_in`` when None)."""
    vi = _REF64 if v_in is None else np.asarray(v_in, np.float64)
    inv = _INV64 if v_in is None else np.linalg.inv(vi)
    vo = vi if v_out is None else np.asarray(v_out, np.float64)
    m = np.empty((3, 4), np.float32)
    m[:, :3] = -((inv * (scale[0], scale[1], 1.0)) @ vo).T      # od -> -(scaled concentrations) @ vo
    m[:, 3] = -(shift[0] * vo[0] + shift[1] * vo[1])
    return m


#: colour parameters that change nothing: z = -od (so 256 exp(z) - 1 is the pixel), then the identity
_NO_STAIN = np.hstack([-np.eye(3), np.zeros((3, 1))]).astype(np.float32)
_NO_MIX = np.hstack([np.eye(3), np.zeros((3, 1))]).astype(np.float32)


def apply_colour(x, params, rounded: bool = True):
    """Colour jitter of RGB images as torch tensors, on whatever device they are: ``x`` (B, 3, H, W)
    in 0..255 (uint8, or float), ``params`` (B, 2, 3, 4) from :func:`colour_params` -> float32
    (B, 3, H, W) in 0..255 (rounded half to even when ``rounded``, as a uint8 image would be).

    Per pixel: optical density ``log 256 - log1p(x)``, ``z = S od + t`` (``params[:, 0]``),
    clipped to [-log 256, 0], RGB ``x' = 256 exp(z) - 1``; then ``y = A x' + k mean(x')``
    (``params[:, 1]`` = ``[A | k]``, the mean over the image's pixels and channels), clipped to
    0..255. The train worker runs it (:func:`stx_platform.training.ingest.to_model`), so the CPU
    ingest only draws the parameters."""
    import torch

    b, _, h, w = x.shape
    p = params.to(device=x.device, dtype=torch.float32)
    s, t = p[:, 0, :, :3], p[:, 0, :, 3:]
    # z = S od + t with od = log 256 - log1p(x): the log1p is taken once, its sign and offset
    # folded into the (3, 3) matrix and the bias
    lx = torch.log1p(x.reshape(b, 3, h * w).float())
    z = torch.baddbmm(t + _LOG256 * s.sum(2, keepdim=True), s, lx, alpha=-1.0)
    x = z.clamp_(-_LOG256, 0.0).exp_().mul_(256.0).sub_(1.0)
    mean = x.mean(dim=(1, 2), keepdim=True)
    y = torch.baddbmm(p[:, 1, :, 3:] * mean, p[:, 1, :, :3], x).clamp_(0.0, 255.0)
    return (y.round_() if rounded else y).view(b, 3, h, w)


def _apply_hwc(rgb: np.ndarray, params: np.ndarray, rounded: bool) -> np.ndarray:
    """:func:`apply_colour` of one (H, W, 3) numpy image -> float32 (H, W, 3) in 0..255."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]   # as a batch row is laid out
    return apply_colour(x, torch.from_numpy(params)[None], rounded)[0].permute(1, 2, 0).numpy()


def stain_jitter(rgb: np.ndarray, scale: Sequence[float], shift: Sequence[float], v_in: np.ndarray | None = None,
                 v_out: np.ndarray | None = None) -> np.ndarray:
    """H&E jitter of an (H, W, 3) image in 0..255 (uint8 or float): RGB -> optical density -> (H, E, residual)
    concentrations in the basis ``v_in`` (rows; the fixed reference vectors when None); H and E
    scaled by ``scale[0:2]`` and shifted by ``shift[0:2]``; back to OD with ``v_out`` (``v_in``
    when None) and to RGB (float32, clipped to 0..255)."""
    params = np.stack([_stain_matrix(scale, shift, v_in, v_out), _NO_MIX])
    return _apply_hwc(np.asarray(rgb), params, rounded=False)


def stain_bases(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray | None, ...]:
    """(v_in, v_out) for :func:`stain_jitter` under ``cfg``: the patch's Macenko basis (or the
    reference) and the same with H and E each tilted by up to ``cfg.stain_tilt`` degrees (draws
    from ``rng`` only when tilting). (None, None) for the reference basis untilted."""
    if cfg.stain_basis == "reference" and not cfg.stain_tilt:
        return None, None
    he = stain.macenko(img) if cfg.stain_basis == "macenko" else None
    v_in = STAIN_VECTORS.astype(np.float64) if he is None else stain.basis(he)
    if not cfg.stain_tilt:
        return v_in, None
    return v_in, np.vstack([stain.tilt(v_in[0], cfg.stain_tilt, rng), stain.tilt(v_in[1], cfg.stain_tilt, rng),
                            v_in[2]])


def colour_params(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    """One image's stain, brightness, contrast and saturation jitter as (2, 3, 4) float32 for
    :func:`apply_colour`; None when ``cfg`` jitters no colour.

    Draws, in this order: stain scale (2) and shift (2), brightness, contrast, saturation, the
    stain vectors' tilts (each only when enabled). Stain jitter in the basis of
    :func:`stain_bases`; then brightness ``x * b``, contrast ``(x - mean) * c + mean``, saturation
    ``(x - grey) * s + grey``: one affine map ``y = c b S x + (1 - c) b mean(x)`` with
    ``S = s I + (1 - s) 1 grey^T``, so ``params[1] = [c b S | (1 - c) b]``. ``img`` is read only
    for the Macenko basis.
    """
    jitter_stain = bool(cfg.stain_scale or cfg.stain_shift or cfg.stain_tilt)
    if not (jitter_stain or cfg.brightness or cfg.contrast or cfg.saturation):
        return None
    if jitter_stain:
        scale = rng.uniform(1 - cfg.stain_scale, 1 + cfg.stain_scale, 2)
        shift = rng.uniform(-cfg.stain_shift, cfg.stain_shift, 2)
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness) if cfg.brightness else 1.0
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast else 1.0
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) if cfg.saturation else 1.0
    params = np.empty((2, 3, 4), np.float32)
    params[1, :, :3] = c * b * (s * np.eye(3) + (1 - s) * _GREY[None, :])
    params[1, :, 3] = (1 - c) * b
    params[0] = _stain_matrix(scale, shift, *stain_bases(img, rng, cfg)) if jitter_stain else _NO_STAIN
    return params


def colour_image(img: np.ndarray, params: np.ndarray | None) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image with :func:`colour_params`' jitter applied (:func:`apply_colour`
    on the CPU), as uint8."""
    return img if params is None else _apply_hwc(img, params, rounded=True).astype(np.uint8)


def colour_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """:func:`colour_params` drawn for an RGB uint8 (H, W, 3) image and applied to it, as uint8."""
    return colour_image(img, colour_params(img, rng, cfg))


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


def augment_shape(image: np.ndarray, inst: np.ndarray, rng: np.random.Generator,
                  config: AugmentConfig | None = None, defer_image: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, bool, bool] | None]:
    """(image (H, W, 3) uint8, instance map (H, W)) -> (image, augmented instance map, colour
    parameters or None, geometry or None): the geometric and albumentations ops done, the colour
    jitter only drawn (:func:`colour_params`) for :func:`apply_colour` to do where the batch is
    used. With ``defer_image`` (a square image, no albumentations op on) the image is returned as
    given and ``geometry`` = (k, hflip, vflip) for :func:`apply_geometry` to do there too; else the
    image is moved here and ``geometry`` is None.

    rot90 by k ~ U{0..3}, horizontal flip, vertical flip (the same for both arrays), then the
    albumentations ops that ``config`` turns on (:func:`quality_and_shape`). Targets are to be
    computed from the returned instance map. Colour jitter acts per pixel but for the image
    mean, so it is drawn before the geometric ops and applied last.
    """
    cfg = config or AugmentConfig()
    if image.shape[:2] != inst.shape:
        raise ValueError(f"image {image.shape} and instance map {inst.shape} differ in size")
    geo = _draw_geometric(rng, cfg)
    colour = colour_params(image, rng, cfg)
    defer = defer_image and not cfg.quality_ops() and inst.shape[0] == inst.shape[1]
    inst = _dihedral(inst, *geo)
    if not defer:
        image = _dihedral(image, *geo)
    if cfg.quality_ops():
        image, inst = quality_and_shape(image, inst, rng, cfg)
    return image, inst, colour, (geo if defer else None)


def apply_geometry(x, geometry):
    """:func:`_dihedral` of each image of a torch batch ``x`` (B, H, W, C), H = W, on its device:
    ``geometry`` (B, 3) = (k, hflip, vflip) per image, as :func:`augment_shape` returns it."""
    import torch

    g = geometry.to("cpu").tolist()
    out = torch.empty_like(x)
    for code in set(map(tuple, g)):
        rows = torch.tensor([i for i, r in enumerate(g) if tuple(r) == code], device=x.device)
        k, hflip, vflip = code
        y = torch.rot90(x.index_select(0, rows), int(k), dims=(1, 2))
        y = y.flip(2) if hflip else y
        out[rows] = y.flip(1) if vflip else y
    return out


def augment(image: np.ndarray, inst: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, instance map (H, W)) -> augmented copies, still aligned pixel for
    pixel: :func:`augment_shape`, then its colour jitter applied to the image (uint8)."""
    image, inst, colour, _ = augment_shape(image, inst, rng, config)
    return colour_image(image, colour), inst


@lru_cache(maxsize=8)
def _albumentations(cfg: AugmentConfig, height: int, width: int):
    import albumentations as alb

    side = min(height, width)
    ops = [alb.RandomSizedCrop(min_max_height=(side // 2, side), size=(height, width), w2h_ratio=width / height,
                               p=cfg.p_sized_crop),
           alb.ElasticTransform(alpha=120, sigma=6, border_mode=cv2.BORDER_REFLECT_101, p=cfg.p_elastic),
           alb.Downscale(scale_range=(0.5, 0.5), p=cfg.p_downscale),
           alb.Blur(blur_limit=(3, 9), p=cfg.p_blur),
           alb.GaussNoise(std_range=(0.0, float(np.sqrt(50.0)) / 255.0), p=cfg.p_noise),
           alb.ZoomBlur(max_factor=1.05, p=cfg.p_zoom_blur)]
    return alb.Compose([op for op in ops if op.p > 0])


def quality_and_shape(image: np.ndarray, inst: np.ndarray, rng: np.random.Generator,
                      config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """CellViT's albumentations ops with ``config``'s probabilities, seeded from ``rng`` (one
    draw) so that a sample's augmentation is reproducible. The random-sized crop and the elastic
    warp move the instance map with the image (nearest neighbour: ids are never blended, so a
    nucleus keeps its id and its label); the others touch the image only."""
    t = _albumentations(config, *inst.shape)
    t.set_random_seed(int(rng.integers(2 ** 31)))
    out = t(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(inst))
    return out["image"], out["mask"]




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
