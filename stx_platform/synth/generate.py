"""Generate a set of synthetic slides: which organs, seeds, ids and format styles, in parallel."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from stx_platform.synth.formats import STYLES
from stx_platform.synth.organs import RECIPES, TRAINING_ORGANS, recipe

#: The embedded default set: four training organs, small enough to build in seconds.
DEFAULT_ORGANS = ("breast", "colon", "lung", "kidney")
DEFAULT_SLIDES = 4
DEFAULT_CELLS = 3000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SlideSpec:
    sample_id: str
    organ: str
    seed: int
    cells: int
    style: str
    tumour: bool = True


def plan(slides: int = DEFAULT_SLIDES, seed: int = DEFAULT_SEED, organs: tuple[str, ...] | None = None,
         cells: int = DEFAULT_CELLS, prefix: str = "SYN") -> list[SlideSpec]:
    """Slide i gets organ organs[i % len], seed (seed, i), the i-th format style in turn, and a
    tumour unless it is the 5th, 10th... slide (healthy tissue, as some HEST samples are)."""
    if slides < 1:
        raise ValueError("--slides must be at least 1")
    if cells < 200:
        raise ValueError("--cells must be at least 200 (clustering needs cells)")
    organs = tuple(recipe(o).key for o in (organs or (DEFAULT_ORGANS if slides <= len(DEFAULT_ORGANS)
                                                      else TRAINING_ORGANS)))
    return [SlideSpec(f"{prefix}{seed:02d}{i:03d}" if seed < 100 else f"{prefix}{seed}_{i:03d}",
                      organs[i % len(organs)], seed * 1000 + i, cells, STYLES[i % len(STYLES)].name, i % 5 != 4)
            for i in range(slides)]


#: Slides with at least this many cells report each stage as they go.
VERBOSE_CELLS = 20_000


def _build_one(spec: SlideSpec, out: str, layout: str, threads: int = 1) -> dict:
    from stx_platform.progress import Progress
    from stx_platform.synth.formats import FormatStyle
    from stx_platform.synth.slide import build_slide

    t0 = time.time()
    say = Progress(spec.sample_id if spec.cells >= VERBOSE_CELLS else None)
    say(f"building {spec.organ} section with {spec.cells:,} cells")
    slide = build_slide(spec.sample_id, spec.organ, spec.seed, spec.cells, tumour=spec.tumour)
    if layout == "hest":
        from stx_platform.synth.write_hest import write_hest_sample
        res = write_hest_sample(slide, out, FormatStyle(spec.style), say, threads)
    else:
        from stx_platform.synth.write_xenium import write_xenium_bundle
        res = write_xenium_bundle(slide, out, FormatStyle(spec.style), say, threads)
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _check_layout(layout: str) -> None:
    if layout not in ("hest", "xenium"):
        raise ValueError("layout must be 'hest' or 'xenium'")


def generate_set(out: str, specs: list[SlideSpec], layout: str = "hest", workers: int | None = None,
                 on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Build and write every slide; slides run in parallel processes. Returns summaries in plan order."""
    _check_layout(layout)
    cpus = workers or os.cpu_count() or 1
    workers = max(1, min(cpus, len(specs)))
    threads = max(1, cpus // workers)  # spare cores render the H&E of each slide in threads
    results: dict[str, dict] = {}
    if workers == 1:
        for s in specs:
            results[s.sample_id] = _build_one(s, out, layout, threads)
            if on_done:
                on_done(results[s.sample_id])
    else:
        with ProcessPoolExecutor(workers) as ex:
            futs = {ex.submit(_build_one, s, out, layout, threads): s for s in specs}
            for f in as_completed(futs):
                r = f.result()
                results[r["id"]] = r
                if on_done:
                    on_done(r)
    return [results[s.sample_id] for s in specs]


def generate_set_on_ray(out: str, specs: list[SlideSpec], layout: str = "hest", cpus_per_slide: float = 1.0,
                        on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """``generate_set`` with one Ray task per slide on the connected cluster (e.g. to write a large
    synthetic set straight to a bucket from a cluster's CPU workers). The caller owns ``ray.init``."""
    import ray

    from stx_platform import storage

    _check_layout(layout)
    task = ray.remote(_build_one).options(num_cpus=cpus_per_slide)
    out = storage.absolute(out)
    pending = [task.remote(s, out, layout, max(1, int(cpus_per_slide))) for s in specs]
    results: dict[str, dict] = {}
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        r = ray.get(ready[0])
        results[r["id"]] = r
        if on_done:
            on_done(r)
    return [results[s.sample_id] for s in specs]


def known_organs() -> list[str]:
    return list(RECIPES)
