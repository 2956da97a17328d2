"""The per-worker function of Ray Train's TorchTrainer: CellViT on the streamed ingest.

Each worker reads its shard of the training dataset (``get_dataset_shard`` +
``iter_torch_batches``: the batches arrive with targets computed, the worker computes none),
steps AdamW with an exponentially decaying learning rate, keeps the encoder frozen for the first
``freeze_encoder_epochs``, and with ``amp`` uses fp16 autocast with a grad scaler on GPUs and bf16
autocast on CPUs that compute in bf16 natively. On CPUs the model runs in the channels-last layout
(oneDNN's own for convolutions; 1.2x per step, see ``bench/model.py``). With ``ema_decay``
it keeps a moving average of the weights and BatchNorm statistics, which is what is validated and
saved. After every epoch rank 0 validates on the PanNuke fold and every worker calls
``ray.train.report`` (a barrier); rank 0 attaches the checkpoint (model, optimiser, scheduler,
scaler, metrics, validation pictures), which Ray persists to the run's storage. A restarted worker
group (FailureConfig) or a resumed run continues from the latest checkpoint
(``ray.train.get_checkpoint``).
"""

from __future__ import annotations

import gc
import math
import os
import tempfile
import time
from collections import defaultdict

import torch

from stx_platform import storage
from stx_platform.model import CellViTLoss, build_model, freeze_encoder, load_checkpoint
from stx_platform.training.checkpoint import (
    checkpoint_dir_name,
    load_train_state,
    save_checkpoint,
)
from stx_platform.training.config import TrainConfig
from stx_platform.training.ingest import to_model
from stx_platform.training.validate import evaluate, json_safe


def score_of(metrics: dict, metric: str) -> float:
    """The checkpoint-ranking score: ``val_<metric>``, or -1 while it is undefined (NaN)."""
    v = metrics.get(f"val_{metric}")
    return float(v) if v is not None and math.isfinite(v) else -1.0


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _prepare(net: torch.nn.Module, frozen: bool) -> torch.nn.Module:
    """Freeze/unfreeze the encoder, then (re)wrap for data parallelism. DDP only synchronises the
    parameters that require grad when it is built, so a change of freezing needs a new wrapper."""
    import ray.train.torch

    freeze_encoder(net, frozen)
    gc.collect()                                  # drop a previous DDP wrapper (and its hooks) first
    return ray.train.torch.prepare_model(net)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The mixed-precision dtype ``amp`` trains in on ``device``: fp16 on CUDA; bf16 on CPUs with
    native bf16 arithmetic (AVX512-BF16 or AMX), where a step is 1.2x faster than in fp32; else None (fp32),
    since emulated bf16 is slower than fp32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
            getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        return torch.bfloat16 if native else None
    return None


def weight_average(net: torch.nn.Module, decay: float):
    """An exponential moving average of ``net``'s weights and buffers (torch's ``AveragedModel``),
    its decay warmed up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates so that the
    random initial weights leave the average within the first few hundred steps. Averaging damps
    the step-to-step swings that small batches (and their BatchNorm statistics) cause."""
    from torch.optim.swa_utils import AveragedModel

    def ema(averaged: list, current: list, n: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():       # one dtype per call: BatchNorm's batch counters
            torch._foreach_copy_(averaged, current)
            return
        k = float(n)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + k) / (10.0 + k)))

    return AveragedModel(net, multi_avg_fn=ema, use_buffers=True)


def train_loop(config: dict) -> None:
    """``config``: ``{"train": TrainConfig fields, "run": {"dataset", "label_set_id", "validation", ...}}``."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["train"])
    run = dict(config["run"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    amp_dtype = autocast_dtype(device, cfg.amp)
    use_amp = amp_dtype == torch.float16                  # fp16 with a grad scaler; bf16 needs none
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    torch.manual_seed(cfg.seed + 1000 * rank)
    if device.type == "cpu" and cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads or len(os.sched_getaffinity(0)))

    net = build_model(cfg.model, drop_path=cfg.drop_path, attn_drop=cfg.attn_drop)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = weight_average(net, cfg.ema_decay) if cfg.ema_decay else None
    start = 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            start = load_train_state(d, net, opt, sched, scaler, ema=ema)
    elif cfg.pretrained:
        with storage.local_copy(cfg.pretrained) as p:
            report = load_checkpoint(net, p)
        if rank == 0:
            print(f"pretrained weights {cfg.pretrained}: {report.summary()}", flush=True)
    net.to(device, memory_format=layout)
    if ema is not None:
        ema.to(device, memory_format=layout)
    for state in opt.state.values():                  # optimiser state restored on CPU
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)

    weights = run.get("class_weights")
    loss_fn = CellViTLoss(cfg.loss_weights, class_weights=torch.tensor(weights, device=device) if weights else None)
    shard = ray.train.get_dataset_shard("train")
    fold = None
    if rank == 0:
        from stx_platform.sources.pannuke import PanNukeFold

        fold = PanNukeFold(run["validation"])

    model, frozen = None, None
    for epoch in range(start, cfg.epochs):
        if model is None or (epoch < cfg.freeze_encoder_epochs) != frozen:
            frozen = epoch < cfg.freeze_encoder_epochs
            model = None
            model = _prepare(net, frozen)
        metrics = _train_epoch(model, shard, opt, scaler, loss_fn, cfg, device, amp_dtype, layout, world, ema)
        metrics.update(epoch=epoch + 1, lr=opt.param_groups[0]["lr"], encoder_frozen=float(frozen),
                       resumed_from=float(start), worker_pid=float(os.getpid()))
        sched.step()
        if rank == 0:
            t0 = time.perf_counter()
            kept = ema.module if ema is not None else _unwrap(model)
            ev = evaluate(kept, fold, cfg.val_images, cfg.val_batch_size, use_amp, cfg.overlays)
            metrics.update({f"val_{k}": v for k, v in ev.metrics.items()}, val_s=time.perf_counter() - t0)
            metrics["score"] = score_of(metrics, cfg.metric)
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(d, model, epoch, optimizer=opt, scheduler=sched, scaler=scaler,
                                metrics=json_safe(metrics), run=run, ema=ema)
                ev.write(f"{d}/validation", title=f"epoch {epoch + 1}")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=checkpoint_dir_name(epoch))
        else:
            ray.train.report(metrics, checkpoint=None)


def _train_epoch(model, shard, opt, scaler, loss_fn, cfg: TrainConfig, device, amp_dtype: torch.dtype | None,
                 layout: torch.memory_format, world: int, ema=None) -> dict:
    """One pass over this worker's shard; returns the mean loss and its terms (averaged over
    workers), samples seen and throughput."""
    model.train()
    sums: dict[str, float] = defaultdict(float)
    n = steps = 0
    t0 = time.perf_counter()
    batches = shard.iter_torch_batches(batch_size=cfg.batch_size, device=device, drop_last=False,
                                       local_shuffle_buffer_size=cfg.shuffle_buffer or None)
    for batch in batches:
        x, targets = to_model(batch)
        x = x.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            outputs = model(x)
        total, parts = loss_fn({k: v.float() for k, v in outputs.items()}, targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            ema.update_parameters(_unwrap(model))
        b = len(x)
        n += b
        steps += 1
        sums["loss"] += float(total) * b
        for k, v in parts.items():
            sums[f"loss_{k}"] += float(v) * b
    seconds = time.perf_counter() - t0
    keys = sorted(sums)
    vec = torch.tensor([sums[k] for k in keys] + [n, seconds], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        vec = vec.to(device)
        dist.all_reduce(vec)
        vec = vec.cpu()
    total_n = float(vec[len(keys)])
    out = {k: float(vec[i]) / max(total_n, 1.0) for i, k in enumerate(keys)}
    out.update(samples=total_n, steps=float(steps), epoch_s=seconds,
               samples_per_s=total_n / max(float(vec[len(keys) + 1]) / world, 1e-9))
    return out
