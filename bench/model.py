"""Benchmark: CellViT forward + backward throughput (images/s) on CPU.

For each config and batch size: one training iteration = forward of the model on random
256x256 images, the full CellViT loss (all eight terms, random targets with some Unknown
pixels) and backward; no optimizer step. Warm-up iterations are not timed; the table shows the
median seconds per iteration and images/s. Threads: torch.set_num_threads(os.cpu_count()).

    python bench/model.py                                  # tiny and vit256, batch 2, 4, 8
    python bench/model.py --configs tiny --batches 2 --iters 2
    python bench/model.py --device cuda                    # where a GPU is present
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from stx_platform.model import IGNORE_INDEX, CellViTLoss, build_model, count_parameters


def _targets(b: int, size: int, n_classes: int, device) -> dict[str, torch.Tensor]:
    binary = (torch.rand(b, size, size, device=device) > 0.7).long()
    types = torch.randint(1, n_classes, (b, size, size), device=device) * binary
    types[(torch.rand(b, size, size, device=device) > 0.9) & (binary == 1)] = IGNORE_INDEX
    hv = (torch.rand(b, 2, size, size, device=device) * 2 - 1) * binary.unsqueeze(1)
    return {"binary": binary, "hv": hv, "type": types, "tissue": torch.randint(0, 19, (b,), device=device)}


def bench(name: str, batch: int, size: int, iters: int, warmup: int, device: str) -> dict:
    torch.manual_seed(0)
    model = build_model(name, img_size=size).to(device).train()
    crit = CellViTLoss()
    x = torch.randn(batch, 3, size, size, device=device)
    t = _targets(batch, size, model.config.n_classes, device)
    times = []
    for i in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        total, _ = crit(model(x), t)
        total.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"config": name, "params_M": count_parameters(model) / 1e6, "batch": batch, "s_per_iter": med, "img_per_s": batch / med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "vit256"])
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{args.size}x{args.size}, forward + loss + backward, median of {args.iters} (after {args.warmup} warm-up)")
    print(f"{'config':<8} {'params':>8} {'batch':>5} {'s/iter':>8} {'img/s':>8}")
    for name in args.configs:
        for b in args.batches:
            r = bench(name, b, args.size, args.iters, args.warmup, args.device)
            print(f"{r['config']:<8} {r['params_M']:>7.1f}M {r['batch']:>5} {r['s_per_iter']:>8.2f} {r['img_per_s']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
