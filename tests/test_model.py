"""CellViT model and losses: shapes, parameter counts, a short CPU training run, the Unknown-class
exclusion, hand-computed loss values, checkpoint loading. Small sizes only (CPU, < ~40 s)."""

from __future__ import annotations

import math

import pytest
import torch

from stx_platform.model import (
    CONFIGS,
    DEFAULT_WEIGHTS,
    IGNORE_INDEX,
    CellViT,
    CellViTLoss,
    build_model,
    count_parameters,
    cross_entropy_loss,
    dice_loss,
    focal_tversky_loss,
    freeze_encoder,
    get_config,
    load_checkpoint,
    median_frequency_weights,
    mse_loss,
    msge_loss,
)
from stx_platform.taxonomy import PANNUKE_TYPE_ORDER

OUT_KEYS = ("nuclei_binary_map", "hv_map", "nuclei_type_map", "tissue_types")


def _synthetic_batch(n: int = 2, size: int = 64, seed: int = 0):
    """Images with random disc 'nuclei' coloured by class, and CellViT targets: binary, HV offsets
    normalised per nucleus to [-1, 1] (HoVer-Net), type (one nucleus per image Unknown = -1), tissue."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    colours = torch.tensor([[0.9, 0.75, 0.85], [0.35, 0.1, 0.45], [0.1, 0.1, 0.6], [0.6, 0.3, 0.7], [0.2, 0.4, 0.3],
                            [0.5, 0.1, 0.2]])
    images = colours[0].view(1, 3, 1, 1).repeat(n, 1, size, size)
    binary = torch.zeros(n, size, size, dtype=torch.long)
    types = torch.zeros(n, size, size, dtype=torch.long)
    hv = torch.zeros(n, 2, size, size)
    for b in range(n):
        inst = torch.zeros(size, size, dtype=torch.long)
        for k in range(1, 9):
            cy, cx = (int(v) for v in torch.randint(6, size - 6, (2,), generator=g))
            r = int(torch.randint(3, 7, (1,), generator=g))
            disc = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r) & (inst == 0)
            if disc.sum() < 5:
                continue
            inst[disc] = k
            cls = 1 + (k % 5)
            images[b, :, disc] = colours[cls].view(3, 1)
            types[b][disc] = IGNORE_INDEX if k == 1 else cls  # nucleus 1: Unknown
            ys, xs = yy[disc].float(), xx[disc].float()
            for ch, (coord, com) in enumerate(((xs, round(float(xs.mean()))), (ys, round(float(ys.mean()))))):
                d = coord - com
                if (d < 0).any():
                    d[d < 0] = d[d < 0] / -d.min()
                if (d > 0).any():
                    d[d > 0] = d[d > 0] / d.max()
                hv[b, ch][disc] = d
        binary[b] = (inst > 0).long()
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    x = (images.clamp(0, 1) - 0.5) / 0.5
    targets = {"binary": binary, "hv": hv, "type": types, "tissue": torch.arange(n) * 3 % 19}
    return x, targets


# ------------------------------------------------------------------------------------ model


def test_tiny_output_shapes():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    assert model.config.n_classes == len(PANNUKE_TYPE_ORDER) == 6
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 256))
        assert set(out) == set(OUT_KEYS)
        assert out["nuclei_binary_map"].shape == (1, 2, 256, 256)
        assert out["hv_map"].shape == (1, 2, 256, 256)
        assert out["nuclei_type_map"].shape == (1, 6, 256, 256)
        assert out["tissue_types"].shape == (1, 19)
        assert all(torch.isfinite(v).all() for v in out.values())
        # another size (multiple of 16): the position embedding is interpolated
        out = model(torch.randn(1, 3, 48, 80))
        assert out["nuclei_type_map"].shape == (1, 6, 48, 80)
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 50, 64))


def test_preset_configs_and_parameter_counts():
    assert CONFIGS["tiny"].embed_dim == 64 and CONFIGS["tiny"].depth == 4 and CONFIGS["tiny"].extract_layers == (1, 2, 3, 4)
    expect = {"vit256": (384, 12, 6, (3, 6, 9, 12)), "sam_b": (768, 12, 12, (3, 6, 9, 12)),
              "sam_l": (1024, 24, 16, (6, 12, 18, 24)), "sam_h": (1280, 32, 16, (8, 16, 24, 32))}
    counts = {}
    for name, (dim, depth, heads, layers) in expect.items():
        cfg = CONFIGS[name]
        assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.extract_layers) == (dim, depth, heads, layers)
        with torch.device("meta"):  # shapes only: no memory, no init cost
            m = CellViT(cfg)
        counts[name] = count_parameters(m)
        widths = (m.decoder1[0].block[0].out_channels, m.decoder1[1].block[0].out_channels, m.decoder3[0].block[0].out_channels)
        assert widths == ((256, 128, 312) if dim < 512 else (512, 256, 512))
        assert tuple(m.encoder.pos_embed.shape) == (1, 257, dim)
        assert tuple(m.encoder.head.weight.shape) == (19, dim)
    # CellViT-256 is published at ~46.75M parameters (ViT-S 21.7M + decoder ~25M)
    assert 45e6 < counts["vit256"] < 48.5e6
    assert 130e6 < counts["sam_b"] < 160e6
    assert counts["sam_b"] < counts["sam_l"] < counts["sam_h"] < 750e6
    with pytest.raises(ValueError):
        get_config("tiny", extract_layers=(1, 2, 3, 5))
    with pytest.raises(ValueError):
        get_config("tiny", num_heads=3)


@pytest.mark.parametrize("mode", ["fp32", "channels-last", "amp channels-last"])
def test_tiny_model_trains_on_a_fixed_batch(mode):
    """As CPU training runs it: fp32, or in the channels-last layout, with ``amp`` as it runs on
    this CPU (bf16 autocast where the CPU has native bf16, else fp32; ``autocast_dtype``)."""
    from stx_platform.training.loop import autocast_dtype

    dtype = autocast_dtype(torch.device("cpu"), mode.startswith("amp"))
    layout = torch.contiguous_format if mode == "fp32" else torch.channels_last
    torch.manual_seed(0)
    x, targets = _synthetic_batch(n=2, size=32, seed=0)  # 32 px keeps 15 steps at a few s on 2 cores
    x = x.contiguous(memory_format=layout)
    model = build_model("tiny", img_size=32).to(memory_format=layout).train()
    criterion = CellViTLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.85, 0.95), weight_decay=1e-4)
    losses, first = [], None
    for _ in range(15):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x)
        assert (out["nuclei_binary_map"].dtype == torch.bfloat16) == (dtype is not None)
        total, comps = criterion({k: v.float() for k, v in out.items()}, targets)
        assert set(comps) == set(DEFAULT_WEIGHTS)
        first = first or {k: v.item() for k, v in comps.items()}
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    last = {k: v.item() for k, v in comps.items()}
    assert all(last[k] < first[k] for k in first), (first, last)  # every term falls, not only the total
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert losses[-1] < 0.8 * losses[0], losses


def test_freeze_encoder_keeps_tissue_head_trainable():
    model = build_model("tiny", img_size=64)
    freeze_encoder(model, True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "encoder.blocks.0.attn.qkv.weight" in frozen and "encoder.pos_embed" in frozen
    assert not any(n.startswith(("encoder.head.", "decoder", "hv_map_decoder")) for n in frozen)
    freeze_encoder(model, False)
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------ losses


def _random_outputs(b=2, c=6, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "nuclei_binary_map": torch.randn(b, 2, h, w, generator=g),
        "hv_map": torch.randn(b, 2, h, w, generator=g),
        "nuclei_type_map": torch.randn(b, c, h, w, generator=g),
        "tissue_types": torch.randn(b, 19, generator=g),
    }


def test_unknown_pixels_do_not_affect_type_loss():
    _, t = _synthetic_batch(n=2, size=32, seed=3)
    unknown = t["type"] == IGNORE_INDEX
    assert unknown.any() and (t["binary"][unknown] == 1).all()  # Unknown nuclei are nuclei
    out = _random_outputs(h=32, w=32)
    crit = CellViTLoss()
    total, base = crit(out, t)
    assert torch.allclose(total, sum(DEFAULT_WEIGHTS[k] * v for k, v in base.items()))

    changed = {k: v.clone() for k, v in out.items()}
    m = unknown.unsqueeze(1)
    changed["nuclei_type_map"] = torch.where(m, 10.0 * torch.randn_like(out["nuclei_type_map"]), out["nuclei_type_map"])
    _, after = crit(changed, t)
    for k in ("type_ce", "type_dice", "type_focal_tversky"):
        assert torch.allclose(after[k], base[k], rtol=1e-6, atol=0), k
    # ... whereas with the Unknown pixels labelled as a class, the same change would matter
    t_bg = {**t, "type": t["type"].clamp_min(0)}
    _, b0 = crit(out, t_bg)
    _, b1 = crit(changed, t_bg)
    for k in ("type_ce", "type_dice", "type_focal_tversky"):
        assert not torch.allclose(b0[k], b1[k]), k

    # binary and HV terms do see the Unknown nuclei
    changed = {k: v.clone() for k, v in out.items()}
    changed["nuclei_binary_map"] = torch.where(m, out["nuclei_binary_map"] + torch.tensor([3.0, -3.0]).view(1, 2, 1, 1), out["nuclei_binary_map"])
    changed["hv_map"] = torch.where(m, out["hv_map"] + 0.5 * torch.randn_like(out["hv_map"]), out["hv_map"])
    _, after = crit(changed, t)
    for k in ("binary_focal_tversky", "binary_dice", "hv_mse", "hv_msge"):
        assert not torch.allclose(after[k], base[k]), k
    for k in ("type_ce", "type_dice", "type_focal_tversky", "tissue_ce"):
        assert torch.equal(after[k], base[k]), k


def _two_pixel_binary():
    # target: pixel 0 nucleus, pixel 1 background -> one-hot channel 0 (background) [0, 1], channel 1 [1, 0]
    probs = torch.tensor([[0.1, 0.7], [0.9, 0.3]]).view(1, 2, 1, 2)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 2, 1, 2)
    return probs, target


def test_dice_hand_value():
    probs, target = _two_pixel_binary()
    s = 1e-3
    # ch0: inter 0.7, sum p 0.8, sum t 1;  ch1: inter 0.9, sum p 1.2, sum t 1
    expected = (1 - (1.4 + s) / (1.8 + s)) + (1 - (1.8 + s) / (2.2 + s))
    assert dice_loss(probs, target).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    # an invalid pixel is dropped: only pixel 0 counts -> ch0: inter 0, sum p 0.1, t 0; ch1: inter .9, p .9, t 1
    valid = torch.tensor([[[True, False]]])
    expected = (1 - s / (0.1 + s)) + (1 - (1.8 + s) / (1.9 + s))
    assert dice_loss(probs, target, valid).item() == pytest.approx(expected, rel=1e-6)


def test_focal_tversky_hand_value():
    probs, target = _two_pixel_binary()
    # pooled: TP = .7 + .9 = 1.6, FN = .3 + .1 = .4, FP = .1 + .3 = .4 -> TI = 1.6 / (1.6 + .28 + .12) = 0.8
    assert focal_tversky_loss(probs, target).item() == pytest.approx(0.2 ** (4 / 3), rel=1e-5)
    # per class: ch0 TP .7 FN .3 FP .1; ch1 TP .9 FN .1 FP .3
    ti0, ti1 = 0.7 / (0.7 + 0.7 * 0.3 + 0.3 * 0.1), 0.9 / (0.9 + 0.7 * 0.1 + 0.3 * 0.3)
    expected = (1 - ti0) ** (4 / 3) + (1 - ti1) ** (4 / 3)
    assert focal_tversky_loss(probs, target, per_class=True).item() == pytest.approx(expected, rel=1e-5)
    assert focal_tversky_loss(target, target, per_class=True).item() == pytest.approx(0.0, abs=1e-6)


def test_cross_entropy_and_mse_hand_values():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]]).T.reshape(1, 3, 1, 2)
    target = torch.tensor([[[0, IGNORE_INDEX]]])
    assert cross_entropy_loss(logits, target).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    assert cross_entropy_loss(logits, torch.full_like(target, IGNORE_INDEX)).item() == 0.0
    target = torch.tensor([[[0, 1]]])
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(1 + 2 * math.exp(-5))) / 2
    assert cross_entropy_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # class weights: a weighted mean, so class 1's pixel counts 3 times class 0's
    w = torch.tensor([1.0, 3.0, 1.0])
    expected = (math.log(1 + 2 * math.exp(-2)) + 3 * math.log(1 + 2 * math.exp(-5))) / 4
    assert cross_entropy_loss(logits, target, weight=w).item() == pytest.approx(expected, rel=1e-6)
    pred, true = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    pred[0, 0, 0, 0], pred[0, 1, 1, 1] = 1.0, -2.0
    assert mse_loss(pred, true).item() == pytest.approx((1 + 4) / 8)


def test_median_frequency_weights_favour_rare_classes_and_leave_background():
    order = ("Background", "Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")
    w = median_frequency_weights({"Neoplastic": 100, "Inflammatory": 50, "Connective": 300, "Epithelial": 200,
                                  "Unknown": 999}, order)
    assert w == pytest.approx([1.0, 1.5, 3.0, 0.5, 1.0, 0.75])      # median 150; Dead absent, Unknown not a class
    assert median_frequency_weights({}, order) == [1.0] * 6


def test_msge_hand_values_and_orientation():
    _, t = _synthetic_batch(n=1, size=32, seed=1)
    hv, binary = t["hv"], t["binary"]
    assert msge_loss(hv, hv, binary).item() == 0.0  # perfect prediction
    # a ramp a*x added to the horizontal channel: its x-gradient is 12a with the 5x5 kernel
    # (sum of dx^2/(dx^2+dy^2) over the kernel = 12), so MSGE = (12a)^2 / 2 (two channels)
    # inside a focus region >= 2 px from the border (no padding effects)
    a = 0.1
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    focus = torch.zeros(1, 16, 16, dtype=torch.long)
    focus[:, 4:12, 4:12] = 1
    target = torch.zeros(1, 2, 16, 16)
    ramp_x, ramp_y = torch.zeros_like(target), torch.zeros_like(target)
    ramp_x[:, 0], ramp_y[:, 0] = a * xx, a * yy
    assert msge_loss(ramp_x, target, focus).item() == pytest.approx(72 * a * a, rel=1e-5)
    # own-axis convention (HoVer-Net paper): the horizontal map is differentiated along x only
    assert msge_loss(ramp_y, target, focus).item() == pytest.approx(0.0, abs=1e-10)
    ramp_x[:, 1], ramp_y[:, 1] = ramp_x[:, 0], ramp_y[:, 0]
    ramp_x[:, 0], ramp_y[:, 0] = 0, 0
    assert msge_loss(ramp_y, target, focus).item() == pytest.approx(72 * a * a, rel=1e-5)
    assert msge_loss(ramp_x, target, focus).item() == pytest.approx(0.0, abs=1e-10)


def test_loss_weights_override():
    out = _random_outputs()
    _, t = _synthetic_batch(n=2, size=16, seed=2)
    total, comps = CellViTLoss({"hv_msge": 0.0, "tissue_ce": 1.0})(out, t)
    w = {**DEFAULT_WEIGHTS, "hv_msge": 0.0, "tissue_ce": 1.0}
    assert torch.allclose(total, sum(w[k] * v for k, v in comps.items()))
    t.pop("tissue")
    _, comps = CellViTLoss()(out, t)
    assert "tissue_ce" not in comps
    with pytest.raises(ValueError):
        CellViTLoss({"nope": 1.0})


# ------------------------------------------------------------------------------------ checkpoints


class _NotATensor:
    pass


def test_load_checkpoint_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    src = build_model("tiny", img_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        src.train()(x)  # non-default BatchNorm running statistics
    src.eval()
    path = tmp_path / "cellvit.pth"
    torch.save({"model_state_dict": src.state_dict(), "epoch": 3, "arch": "CellViT256"}, path)

    torch.manual_seed(1)
    dst = build_model("tiny", img_size=32).eval()
    with torch.no_grad():
        ref = src(x)
        assert not torch.allclose(dst(x)["hv_map"], ref["hv_map"])
        report = load_checkpoint(dst, path)
        assert report.ok and len(report.loaded) == len(src.state_dict())
        out = dst(x)
    for k in OUT_KEYS:
        assert torch.equal(out[k], ref[k]), k

    # another number of type classes: the type head's last conv is reported, not raised
    other = build_model("tiny", img_size=32, n_classes=5)
    report = load_checkpoint(other, path)
    names = {m[0] for m in report.mismatched}
    assert names == {"nuclei_type_maps_decoder.decoder0_header.2.weight", "nuclei_type_maps_decoder.decoder0_header.2.bias"}
    assert ("nuclei_type_maps_decoder.decoder0_header.2.weight", (6, 8, 1, 1), (5, 8, 1, 1)) in report.mismatched
    assert set(report.missing) == names and not report.skipped
    assert torch.equal(other.hv_map_decoder.decoder0_header[2].weight, src.hv_map_decoder.decoder0_header[2].weight)
    with pytest.raises(ValueError):
        load_checkpoint(build_model("tiny", img_size=32, n_classes=5), path, strict=True)

    # a bare state dict with extra keys and another token grid (position embedding resampled)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    sd["module.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bare.pth")
    big = build_model("tiny", img_size=64)
    report = load_checkpoint(big, tmp_path / "bare.pth")
    assert report.skipped == ["module.extra.weight"] and not report.mismatched
    assert report.resized == [("encoder.pos_embed", (1, 5, 64), (1, 17, 64))]
    assert torch.equal(big.encoder.pos_embed[:, 0], src.encoder.pos_embed[:, 0])

    # pickled objects are refused (weights_only), not executed
    torch.save({"model_state_dict": src.state_dict(), "obj": _NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(dst, tmp_path / "pickled.pth")
