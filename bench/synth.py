"""Benchmark: one large synthetic slide (default 200k cells) end to end, by stage, with peak memory.

Prints the time of each stage (section build, H&E render + pyramid, transcripts, polygons,
ground truth), the slide's size, the process's peak RSS, and the H&E render rate with 1 thread
and with all cores on the same region (the threaded/serial ratio).

    python bench/synth.py                       # 200k cells, HEST layout, temporary folder
    python bench/synth.py --cells 50000 --out /tmp/big --keep
    python bench/synth.py --render-only --baseline 0f5c2ee   # render cost per MP vs a commit's renderer

``--baseline REV`` loads ``stx_platform/synth/render.py`` as it was at git revision REV into this
process and renders the same slide and region with both, in turns, so the ratio is measured on one
machine in one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from stx_platform.progress import Progress
from stx_platform.synth.formats import FormatStyle
from stx_platform.synth.slide import build_slide
from stx_platform.synth.write_hest import write_hest_sample


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def baseline_renderer(slide, rev: str):
    """The slide's renderer built by ``render.py`` as of git revision ``rev`` (same geometry and stain)."""
    from revision import module_at

    mod = module_at(rev, "stx_platform/synth/render.py")
    new = slide.renderer()
    stain = mod.Stain(**{k: getattr(slide.stain, k) for k in mod.Stain.__dataclass_fields__})
    return mod.SlideRenderer(new.layout, new.cells, mod.CellGeometry(new.geom.nuc_xy, new.geom.cell_xy), new.mpp,
                             stain, new.seed)


def render_rate(slide, threads: int, side: int = 4096, block: int = 1024, renderer=None) -> float:
    """Megapixels per second rendering a side x side region from the slide's centre."""
    r = renderer or slide.renderer()
    x0 = max(0, slide.width_px // 2 - side // 2)
    y0 = max(0, slide.height_px // 2 - side // 2)
    boxes = [(x0 + x, y0 + y, block, block) for y in range(0, side, block) for x in range(0, side, block)]
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda b: r.render(*b), boxes))
    return side * side / 1e6 / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--organ", default="breast")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the output")
    ap.add_argument("--render-only", action="store_true", help="time the H&E render only (no sample written)")
    ap.add_argument("--baseline", default=None, metavar="REV", help="also time render.py as of this git revision")
    ap.add_argument("--repeats", type=int, default=3, help="render timings per renderer (median; turns alternate)")
    args = ap.parse_args()
    if args.render_only:
        return render_only(args)
    cpus = os.cpu_count() or 1
    out = args.out or tempfile.mkdtemp(prefix="stx-bench-synth-")
    say = Progress("bench")
    try:
        t = time.perf_counter()
        slide = build_slide("BENCH000", args.organ, args.seed, args.cells)
        t_build = time.perf_counter() - t
        say(f"section: {slide.n_cells:,} cells, {slide.width_px} x {slide.height_px} px "
            f"({slide.width_px * slide.height_px / 1e6:.0f} MP) at {slide.mpp} um/px; built in {t_build:.1f} s")
        serial = render_rate(slide, 1)
        threaded = render_rate(slide, cpus)
        t = time.perf_counter()
        res = write_hest_sample(slide, out, FormatStyle("modern"), say, workers=cpus)
        t_write = time.perf_counter() - t
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        print()
        print(f"cells {res['cells']:,}  transcripts {res['transcripts']:,}  "
              f"image {res['width_px']}x{res['height_px']} px")
        print(f"build section   {t_build:8.1f} s")
        print(f"write sample    {t_write:8.1f} s   ({size / 1e9:.2f} GB on disk)")
        print(f"total           {t_build + t_write:8.1f} s")
        print(f"render rate     {serial:8.2f} MP/s on 1 thread, {threaded:.2f} MP/s on {cpus} "
              f"(x{threaded / serial:.2f})")
        print(f"peak RSS        {peak_gb():8.2f} GB")
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(out, ignore_errors=True)


def render_only(args) -> None:
    """Seconds per megapixel of the H&E render, 1 thread, this renderer and (``--baseline``) another,
    timed in alternating turns on the same slide and region; medians."""
    import statistics

    slide = build_slide("BENCH000", args.organ, args.seed, args.cells)
    side = min(2048, slide.width_px, slide.height_px) // 256 * 256
    rends = {"this": slide.renderer()}
    if args.baseline:
        rends[args.baseline] = baseline_renderer(slide, args.baseline)
    times = {k: [] for k in rends}
    for _ in range(args.repeats):
        for k, r in rends.items():
            times[k].append(1.0 / render_rate(slide, 1, side, 512, r))
    print(f"{args.organ}, {slide.n_cells:,} cells, {side} x {side} px region at {slide.mpp} um/px, 1 thread")
    base = statistics.median(times[args.baseline]) if args.baseline else None
    for k, ts in times.items():
        med = statistics.median(ts)
        ratio = f"  ({med / base:.2f}x the baseline's time)" if base else ""
        print(f"render {k:>10}: {med:.3f} s/MP{ratio}")


if __name__ == "__main__":
    main()
