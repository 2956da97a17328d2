"""CellViT (Hörst et al. 2024): a ViT encoder with a UNETR-like decoder of three nuclei branches
(binary map, HV map, type map) and a tissue-classification head on the CLS token.

Written from the architecture facts in shared/REFERENCE.md ("CellViT"); module and parameter names
follow the layout of the official CellViT-256 checkpoints (``encoder.blocks.0.attn.qkv.weight``,
``decoder1.0.block.0.weight``, ``nuclei_type_maps_decoder.decoder0_header.2.weight``, ...) so that
:func:`load_checkpoint` can map such a file by name. Shapes, for a 256x256 input and token size 16:

- encoder: patch embedding (16x16 conv, stride 16) -> CLS + 256 tokens + learned position
  embedding -> ``depth`` pre-norm blocks (MHSA + MLP, drop path); the outputs of the blocks in
  ``extract_layers`` (1-based) are the skips z1..z4 (z4 = the bottleneck), reshaped to
  (B, dim, 16, 16); the tissue head is ``encoder.head`` = Linear(dim, n_tissue) on the normed CLS.
- shared decoder skips: decoder0 = 2 conv blocks 3->32->64 on the image (256x256); decoder1/2/3 =
  3/2/1 deconv blocks (transposed conv 2x + 3x3 conv) from z1/z2/z3 -> 128 ch @128, 256 ch @64,
  ``bottleneck_dim`` ch @32.
- per branch: z4 --transposed conv--> @32, concat decoder3 -> 3 conv blocks + up -> @64, concat
  decoder2 -> 2 conv blocks + up -> @128, concat decoder1 -> 2 conv blocks + up -> @256, concat
  decoder0 -> 2 conv blocks + 1x1 conv.
- decoder widths: skip_dim_11/skip_dim_12/bottleneck_dim = 256/128/312 when dim < 512, else
  512/256/512.

The SAM presets use the SAM-B/L/H *sizes* (dim, depth, heads, tapped blocks) with this plain
global-attention ViT; the official CellViT-SAM encoders (windowed attention, relative position
terms, a neck) have a different parameter layout, so their encoder weights are reported as
skipped/mismatched by :func:`load_checkpoint` and only the decoder maps.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from stx_platform.taxonomy import PANNUKE_TYPE_ORDER

N_TISSUE = 19

# --------------------------------------------------------------------------------------------
# configuration


class CellViTConfig(BaseModel):
    """Architecture of a CellViT model. ``extract_layers`` are 1-based block indices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    embed_dim: int = Field(384, gt=0)
    depth: int = Field(12, gt=0)
    num_heads: int = Field(6, gt=0)
    extract_layers: tuple[int, int, int, int] = (3, 6, 9, 12)
    mlp_ratio: float = Field(4.0, gt=0)
    qkv_bias: bool = True
    n_classes: int = Field(len(PANNUKE_TYPE_ORDER), ge=2, description="nuclei type classes incl. background (index 0)")
    n_tissue: int = Field(N_TISSUE, ge=1)
    drop_path: float = Field(0.1, ge=0, lt=1, description="stochastic depth, rising linearly to this over the blocks")
    attn_drop: float = Field(0.1, ge=0, lt=1)
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout after MLP/projection and in decoder blocks")
    img_size: int = Field(256, gt=0, description="training size; other multiples of patch interpolate the position embedding")
    patch: int = Field(16, gt=0)
    in_chans: int = Field(3, gt=0)
    decoder_scale: float = Field(1.0, gt=0, le=1, description="decoder channel widths x this (1 = CellViT's)")

    @model_validator(mode="after")
    def _check(self) -> CellViTConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        layers = list(self.extract_layers)
        if layers != sorted(set(layers)) or layers[0] < 1 or layers[-1] > self.depth:
            raise ValueError(f"extract_layers {layers} must be 4 increasing block indices in 1..{self.depth}")
        if self.img_size % self.patch:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch {self.patch}")
        if self.patch != 16:
            raise ValueError("the CellViT decoder upsamples the token grid 4 times by 2: patch must be 16")
        return self

    def width(self, channels: int) -> int:
        """A decoder width scaled by ``decoder_scale`` (unchanged at 1)."""
        return max(4, int(round(channels * self.decoder_scale)))

    @property
    def skip_dim_11(self) -> int:
        return self.width(256 if self.embed_dim < 512 else 512)

    @property
    def skip_dim_12(self) -> int:
        return self.width(128 if self.embed_dim < 512 else 256)

    @property
    def bottleneck_dim(self) -> int:
        return self.width(312 if self.embed_dim < 512 else 512)


CONFIGS: dict[str, CellViTConfig] = {
    # a CPU test / demo config: small encoder, decoder at 1/8 of CellViT's widths
    "tiny": CellViTConfig(name="tiny", embed_dim=64, depth=4, num_heads=2, extract_layers=(1, 2, 3, 4),
                          decoder_scale=0.125),
    # the CPU preset's config: tiny's decoder under an encoder twice as wide (type needs the width;
    # the decoder's full-resolution convolutions, not the encoder, set the step time)
    "small": CellViTConfig(name="small", embed_dim=128, depth=4, num_heads=4, extract_layers=(1, 2, 3, 4),
                           decoder_scale=0.125),
    # CellViT-256: HIPT ViT-256 (ViT-S/16)
    "vit256": CellViTConfig(name="vit256", embed_dim=384, depth=12, num_heads=6, extract_layers=(3, 6, 9, 12)),
    "sam_b": CellViTConfig(name="sam_b", embed_dim=768, depth=12, num_heads=12, extract_layers=(3, 6, 9, 12)),
    "sam_l": CellViTConfig(name="sam_l", embed_dim=1024, depth=24, num_heads=16, extract_layers=(6, 12, 18, 24)),
    "sam_h": CellViTConfig(name="sam_h", embed_dim=1280, depth=32, num_heads=16, extract_layers=(8, 16, 24, 32)),
}


def get_config(name: str, **overrides) -> CellViTConfig:
    """A preset from :data:`CONFIGS` with fields overridden (validated), e.g. ``n_classes=5``."""
    if name not in CONFIGS:
        raise KeyError(f"unknown CellViT config {name!r} (expected one of {sorted(CONFIGS)})")
    return CellViTConfig(**{**CONFIGS[name].model_dump(), **overrides})


# --------------------------------------------------------------------------------------------
# encoder


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability p (scaled by 1/(1-p))."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, dim)


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` rows are ordered (q|k|v) x heads x head_dim."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(MHSA(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Module):
    """Plain ViT. ``forward`` returns (normed CLS embedding (B, dim), [z1, z2, z3, z4]) where each z
    is the token sequence (B, 1 + N, dim) after a tapped block. The tissue head ``head`` lives here
    (as in the official checkpoints) but is applied by :class:`CellViT`."""

    def __init__(self, cfg: CellViTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.grid = cfg.img_size // cfg.patch
        self.patch_embed = PatchEmbed(cfg.patch, cfg.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear 0..drop_path
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.drop_rate, cfg.attn_drop, r) for r in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, cfg.n_tissue)
        self.extract_layers = tuple(cfg.extract_layers)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_vit)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        if gh == self.grid and gw == self.grid:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = grid.shape[-1]
        grid = grid.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, dim)], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        gh, gw = x.shape[-2] // self.cfg.patch, x.shape[-1] // self.cfg.patch
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self._pos_embed(gh, gw))
        skips = []
        for i, blk in enumerate(self.blocks, start=1):
            x = blk(x)
            if i in self.extract_layers:
                skips.append(x)
            if i == self.extract_layers[-1]:
                break  # blocks after the last tap do not reach any output
        return self.norm(x)[:, 0], skips


def _init_vit(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# decoder


class Conv2DBlock(nn.Module):
    """3x3 conv (same padding) -> BatchNorm -> ReLU -> Dropout."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, padding=(kernel_size - 1) // 2),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Deconv2DBlock(nn.Module):
    """Transposed conv 2x2 stride 2 (doubles H, W) -> 3x3 conv -> BatchNorm -> ReLU -> Dropout."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2),
            nn.Conv2d(cout, cout, kernel_size, padding=(kernel_size - 1) // 2),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def _up(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)


def upsampling_branch(cfg: CellViTConfig, out_channels: int) -> nn.Sequential:
    """One branch's own up-path from the bottleneck z4 to full resolution (see module docstring)."""
    bd, p = cfg.bottleneck_dim, cfg.drop_rate
    c256, c128, c64 = cfg.width(256), cfg.width(128), cfg.width(64)
    return nn.Sequential(OrderedDict([
        ("bottleneck_upsampler", _up(cfg.embed_dim, bd)),
        ("decoder3_upsampler", nn.Sequential(
            Conv2DBlock(bd * 2, bd, dropout=p), Conv2DBlock(bd, bd, dropout=p), Conv2DBlock(bd, bd, dropout=p), _up(bd, c256))),
        ("decoder2_upsampler", nn.Sequential(
            Conv2DBlock(c256 * 2, c256, dropout=p), Conv2DBlock(c256, c256, dropout=p), _up(c256, c128))),
        ("decoder1_upsampler", nn.Sequential(
            Conv2DBlock(c128 * 2, c128, dropout=p), Conv2DBlock(c128, c128, dropout=p), _up(c128, c64))),
        ("decoder0_header", nn.Sequential(
            Conv2DBlock(c64 * 2, c64, dropout=p), Conv2DBlock(c64, c64, dropout=p),
            nn.Conv2d(c64, out_channels, kernel_size=1))),
    ]))


#: Output name -> decoder attribute (the official checkpoints' names).
BRANCHES: dict[str, str] = {
    "nuclei_binary_map": "nuclei_binary_map_decoder",
    "hv_map": "hv_map_decoder",
    "nuclei_type_map": "nuclei_type_maps_decoder",
}


class CellViT(nn.Module):
    """CellViT. ``forward(x)`` with x (B, 3, H, W), H and W multiples of 16, returns
    ``{"nuclei_binary_map": (B,2,H,W) logits, "hv_map": (B,2,H,W) (no activation; channel 0
    horizontal, 1 vertical), "nuclei_type_map": (B,n_classes,H,W) logits, "tissue_types":
    (B,n_tissue) logits}``."""

    def __init__(self, cfg: CellViTConfig | str = "vit256"):
        super().__init__()
        cfg = get_config(cfg) if isinstance(cfg, str) else cfg
        self.config = cfg
        self.encoder = ViTEncoder(cfg)
        p, d = cfg.drop_rate, cfg.embed_dim
        w = cfg.width
        self.decoder0 = nn.Sequential(Conv2DBlock(cfg.in_chans, w(32), dropout=p), Conv2DBlock(w(32), w(64), dropout=p))
        self.decoder1 = nn.Sequential(
            Deconv2DBlock(d, cfg.skip_dim_11, dropout=p),
            Deconv2DBlock(cfg.skip_dim_11, cfg.skip_dim_12, dropout=p),
            Deconv2DBlock(cfg.skip_dim_12, w(128), dropout=p),
        )
        self.decoder2 = nn.Sequential(Deconv2DBlock(d, cfg.skip_dim_11, dropout=p),
                                      Deconv2DBlock(cfg.skip_dim_11, w(256), dropout=p))
        self.decoder3 = nn.Sequential(Deconv2DBlock(d, cfg.bottleneck_dim, dropout=p))
        self.nuclei_binary_map_decoder = upsampling_branch(cfg, 2)
        self.hv_map_decoder = upsampling_branch(cfg, 2)
        self.nuclei_type_maps_decoder = upsampling_branch(cfg, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected images (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ps = self.config.patch
        if h % ps or w % ps:
            raise ValueError(f"image size {h}x{w} is not a multiple of the token size {ps}")
        cls, skips = self.encoder(x)
        grid = (h // ps, w // ps)
        z1, z2, z3, z4 = (z[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid) for z in skips)
        # shared skip features, computed once for all three branches
        b0, b1, b2, b3 = self.decoder0(x), self.decoder1(z1), self.decoder2(z2), self.decoder3(z3)
        out = {}
        for key, attr in BRANCHES.items():
            br = getattr(self, attr)
            y = br.decoder3_upsampler(torch.cat([b3, br.bottleneck_upsampler(z4)], dim=1))
            y = br.decoder2_upsampler(torch.cat([b2, y], dim=1))
            y = br.decoder1_upsampler(torch.cat([b1, y], dim=1))
            out[key] = br.decoder0_header(torch.cat([b0, y], dim=1))
        out["tissue_types"] = self.encoder.head(cls)
        return out


def build_model(name: str = "vit256", **overrides) -> CellViT:
    """A CellViT from a preset name with config overrides."""
    return CellViT(get_config(name, **overrides))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def freeze_encoder(model: CellViT, frozen: bool = True) -> None:
    """Freeze (``frozen=True``) or unfreeze the ViT encoder's parameters. The tissue head
    (``encoder.head``) stays trainable either way, as in CellViT's frozen-encoder warm-up."""
    for name, p in model.encoder.named_parameters():
        p.requires_grad = (not frozen) or name.startswith("head.")


# --------------------------------------------------------------------------------------------
# checkpoints


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did. ``skipped``: checkpoint keys the model lacks (or non-tensor
    entries); ``mismatched``: (key, checkpoint shape, model shape); ``missing``: model keys the
    checkpoint did not fill (left as initialised); ``resized``: position embeddings whose token grid
    differed (e.g. HIPT's ViT-256 keeps a 14x14 grid from 224 px pre-training) and were resampled
    bicubically to the model's grid, then loaded (also listed in ``loaded``)."""

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.skipped or self.mismatched or self.missing)

    def summary(self) -> str:
        return (f"loaded {len(self.loaded)} tensors ({len(self.resized)} resized), skipped {len(self.skipped)}, "
                f"shape-mismatched {len(self.mismatched)}, missing {len(self.missing)}")


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = False) -> LoadReport:
    """Load a (user-supplied, e.g. official CellViT) checkpoint into ``model`` by parameter name.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain containers only, no
    pickled code is executed (a file that needs it is refused with a ValueError). A dict holding
    ``model_state_dict`` (the official format) is unwrapped; a ``module.`` prefix (DataParallel)
    is stripped. Tensors whose name and shape match are copied; a position embedding (a key ending in
    ``pos_embed``) of another square token grid is resampled to the model's; the rest is reported. With
    ``strict=True`` anything skipped, mismatched or missing raises ValueError and nothing is loaded.
    """
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not loadable with weights_only=True (refusing to run pickled code): {e}") from e
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict or a dict with 'model_state_dict', got {type(obj).__name__}")

    own = model.state_dict()
    report = LoadReport()
    take = {}
    for key, value in obj.items():
        name = key[len("module."):] if isinstance(key, str) and key.startswith("module.") else key
        if not isinstance(value, torch.Tensor) or name not in own:
            report.skipped.append(str(key))
        elif tuple(value.shape) != tuple(own[name].shape) and (resized := _resize_pos_embed(name, value, own[name])) is not None:
            take[name] = resized
            report.loaded.append(name)
            report.resized.append((name, tuple(value.shape), tuple(own[name].shape)))
        elif tuple(value.shape) != tuple(own[name].shape):
            report.mismatched.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            take[name] = value
            report.loaded.append(name)
    report.missing = [k for k in own if k not in take]
    if strict and not report.ok:
        raise ValueError(f"{path}: checkpoint does not match the model exactly ({report.summary()}); "
                         f"first mismatched {report.mismatched[:3]}, skipped {report.skipped[:3]}, missing {report.missing[:3]}")
    model.load_state_dict(take, strict=False)
    return report



def _resize_pos_embed(name: str, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """(1, 1+g*g, dim) -> (1, 1+G*G, dim) by bicubic resampling of the grid part; None when the key
    is not a position embedding or the shapes do not fit that pattern."""
    if not name.endswith("pos_embed") or value.ndim != 3 or like.ndim != 3 or value.shape[0] != 1 or value.shape[2] != like.shape[2]:
        return None
    g, G = math.isqrt(value.shape[1] - 1), math.isqrt(like.shape[1] - 1)
    if g * g != value.shape[1] - 1 or G * G != like.shape[1] - 1 or g == 0:
        return None
    grid = value[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(G, G), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, G * G, -1)
    return torch.cat([value[:, :1].float(), grid], dim=1).to(like.dtype)
