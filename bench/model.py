"""Benchmark: CellViT forward + backward throughput (images/s) on CPU.

For each config and batch size: one training iteration = forward of the model on random
256x256 images, the full CellViT loss (all eight terms, random targets with some Unknown
pixels) and backward; no optimizer step. Warm-up iterations are not timed; the table shows the
median seconds per iteration and images/s. Threads: torch.set_num_threads(os.cpu_count()).

    python bench/model.py                                  # tiny and vit256, batch 2, 4, 8
    python bench/model.py --configs tiny --batches 2 --iters 2
    python bench/model.py --device cuda                    # where a GPU is present
    python bench/model.py --device cuda --amp              # fp16 autocast (as training on a GPU runs)

On CUDA the table adds the peak GPU memory of the timed iterations.
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


def bench(name: str, batch: int, size: int, iters: int, warmup: int, device: str, amp: bool = False) -> dict:
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    model = build_model(name, img_size=size).to(device).train()
    crit = CellViTLoss()
    x = torch.randn(batch, 3, size, size, device=device)
    t = _targets(batch, size, model.config.n_classes, device)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=amp and cuda)
    times = []
    for i in range(warmup + iters):
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            if i == warmup:
                torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.float16, enabled=amp and cuda):
            total, _ = crit(model(x), t)
        scaler.scale(total).backward()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    return {"config": name, "params_M": count_parameters(model) / 1e6, "batch": batch, "s_per_iter": med,
            "img_per_s": batch / med, "peak_GiB": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "vit256"])
    ap.add_argument("--batches", nargs="+", type=int, default=[2, 4, 8])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="fp16 autocast with grad scaling (CUDA only)")
    args = ap.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    amp = args.amp and args.device.startswith("cuda")
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{'fp16 autocast' if amp else 'fp32'}, {args.size}x{args.size}, forward + loss + backward, median of "
          f"{args.iters} (after {args.warmup} warm-up)")
    print(f"{'config':<8} {'params':>8} {'batch':>5} {'s/iter':>8} {'img/s':>8} {'peak GiB':>9}")
    for name in args.configs:
        for b in args.batches:
            r = bench(name, b, args.size, args.iters, args.warmup, args.device, amp)
            print(f"{r['config']:<8} {r['params_M']:>7.1f}M {r['batch']:>5} {r['s_per_iter']:>8.2f} {r['img_per_s']:>8.2f} "
                  f"{r['peak_GiB']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
