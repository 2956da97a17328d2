"""Benchmark: one large synthetic slide (default 200k cells) end to end, by stage, with peak memory.

Prints the time of each stage (section build, H&E render + pyramid, transcripts, polygons,
ground truth), the slide's size, the process's peak RSS, and the H&E render rate with 1 thread
and with all cores on the same region (the threaded/serial ratio).

    python bench/synth.py                       # 200k cells, HEST layout, temporary folder
    python bench/synth.py --cells 50000 --out /tmp/big --keep
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


def render_rate(slide, threads: int, side: int = 4096, block: int = 1024) -> float:
    """Megapixels per second rendering a side x side region from the slide's centre."""
    r = slide.renderer()
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
    args = ap.parse_args()
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
        print(f"cells {res['cells']:,}  transcripts {res['transcripts']:,}  image {res['width_px']}x{res['height_px']} px")
        print(f"build section   {t_build:8.1f} s")
        print(f"write sample    {t_write:8.1f} s   ({size / 1e9:.2f} GB on disk)")
        print(f"total           {t_build + t_write:8.1f} s")
        print(f"render rate     {serial:8.2f} MP/s on 1 thread, {threaded:.2f} MP/s on {cpus} "
              f"(x{threaded / serial:.2f})")
        print(f"peak RSS        {peak_gb():8.2f} GB")
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
