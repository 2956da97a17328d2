"""Benchmark: CellViT forward + backward throughput (images/s) on CPU.

For each config and batch size: one training iteration = forward of the model on random
256x256 images, the full CellViT loss (all eight terms, random targets with some Unknown
pixels) and backward; no optimizer step. Warm-up iterations are not timed; the table shows the
median seconds per iteration and images/s. Threads: torch.set_num_threads(os.cpu_count()).

    python bench/model.py                                  # tiny and vit256, batch 2, 4, 8
    python bench/model.py --configs tiny --batches 2 --iters 2
    python bench/model.py --device cuda                    # where a GPU is present
    python bench/model.py --device cuda --amp              # fp16 autocast (as training on a GPU runs)
    python bench/model.py --configs small --batches 2 --cpu-modes --iters 8   # CPU training's layout and bf16

On CUDA the table adds the peak GPU memory of the timed iterations. ``--cpu-modes`` times, on CPU,
each config three ways in turns (fp32 in the default layout, fp32 channels-last, and channels-last
with bf16 autocast where the CPU has native bf16, as ``stx train`` with ``amp`` runs on it) and
prints each one's speed-up over the first, measured in the same process.
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


def bench(name: str, batch: int, size: int, iters: int, warmup: int, device: str, amp: bool = False,
          channels_last: bool = False, cpu_dtype: torch.dtype | None = None) -> dict:
    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(name, img_size=size).to(device, memory_format=layout).train()
    crit = CellViTLoss()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
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
        if cuda:
            ac = torch.autocast("cuda", dtype=torch.float16, enabled=amp)
        else:
            ac = torch.autocast("cpu", dtype=cpu_dtype or torch.bfloat16, enabled=cpu_dtype is not None)
        with ac:
            out = model(x)
        total, _ = crit({k: v.float() for k, v in out.items()}, t)
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
    ap.add_argument("--cpu-modes", action="store_true", help="CPU: default layout vs channels-last vs + bf16")
    args = ap.parse_args()
    if args.cpu_modes:
        return cpu_modes(args)

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


def cpu_modes(args) -> None:
    """Each config and batch in the three CPU modes, in turns (``iters`` rounds of one timed
    iteration each, so that a load on the machine touches every mode alike); medians and ratios."""
    from stx_platform.training.loop import autocast_dtype

    torch.set_num_threads(os.cpu_count() or 1)
    bf16 = autocast_dtype(torch.device("cpu"), True)
    modes = [("fp32", False, None), ("fp32 channels-last", True, None)]
    if bf16 is not None:
        modes.append(("bf16 channels-last", True, bf16))
    print(f"torch {torch.__version__}, CPU ({torch.backends.cpu.get_cpu_capability()}), threads "
          f"{torch.get_num_threads()}, native bf16: {bf16 is not None}; forward + loss + backward, "
          f"median of {args.iters} rounds")
    print(f"{'config':<8} {'batch':>5} {'mode':<20} {'s/iter':>8} {'img/s':>8} {'speed-up':>9}")
    for name in args.configs:
        for b in args.batches:
            times: dict[str, list[float]] = {m[0]: [] for m in modes}
            for _ in range(args.iters):
                for label, cl, dt in modes:
                    times[label].append(bench(name, b, args.size, 1, args.warmup, "cpu", channels_last=cl,
                                              cpu_dtype=dt)["s_per_iter"])
            base = statistics.median(times[modes[0][0]])
            for label, _, _ in modes:
                med = statistics.median(times[label])
                print(f"{name:<8} {b:>5} {label:<20} {med:>8.3f} {b / med:>8.2f} {base / med:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
