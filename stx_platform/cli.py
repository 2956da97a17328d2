"""The ``stx`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
import time

from stx_platform import __version__
from stx_platform.errors import SampleError

DEFAULT_HEST_OUT = "stx-data/hest"
DEFAULT_PANNUKE_OUT = "stx-data/pannuke"


def _table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    line = lambda vals: "  ".join(str(v).rjust(w) if isinstance(v, (int, float)) else str(v).ljust(w)  # noqa: E731
                                  for v, w in zip(vals, widths))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line([r.get(c, "") for c in cols]) for r in rows])


def cmd_synth(args) -> int:
    from stx_platform.synth.generate import generate_set, plan
    from stx_platform.synth.organs import RECIPES

    organs = tuple(args.organs) if args.organs else None
    for o in organs or ():
        if o.lower() not in RECIPES and o.lower() not in ("bowel", "lymphoid"):
            print(f"error: unknown organ {o!r}; known: {', '.join(RECIPES)}", file=sys.stderr)
            return 2
    specs = plan(args.slides, args.seed, organs, args.cells)
    t0 = time.time()
    print(f"stx synth: {len(specs)} slide(s), ~{args.cells} cells each, layout {args.layout}, -> {args.out}",
          flush=True)
    done = []

    def on_done(r):
        done.append(r)
        print(f"  [{len(done)}/{len(specs)}] {r['id']} {r['organ']:<10} {r['cells']:>7} cells "
              f"{r['transcripts']:>10} transcripts  {r['width_px']}x{r['height_px']} px @ {r['mpp']} um/px "
              f"({r['seconds']} s)", flush=True)

    results = generate_set(args.out, specs, args.layout, args.workers, on_done)
    rows = [{"sample": r["id"], "organ": r["organ"], "format": r["style"], "cells": r["cells"],
             "transcripts": r["transcripts"], **{k[:5]: v for k, v in r["classes"].items()}} for r in results]
    print()
    print(_table(rows, list(rows[0])))
    print(f"\nwrote {len(results)} slide(s) to {args.out} in {time.time() - t0:.1f} s")
    if args.layout == "hest":
        print(f"ground-truth pictures: {args.out}/thumbnails/<id>_truth.png")
        print(f"inspect one:           stx inspect '{args.out}#{results[0]['id']}'")
    else:
        print(f"inspect one:           stx inspect {args.out}/{results[0]['id']}")
    return 0


def cmd_synth_pannuke(args) -> int:
    from stx_platform.synth.pannuke import write_pannuke_fold

    t0 = time.time()
    print(f"stx synth-pannuke: {args.n} images -> {args.out}", flush=True)
    res = write_pannuke_fold(args.out, args.n, args.seed, progress=lambda m: print(f"  {m}", flush=True))
    print(f"wrote {res['images']} images ({', '.join(res['tissues'])}); nuclei per class: {res['nuclei']}")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def cmd_inspect(args) -> int:
    from stx_platform.sources import read_sample

    kwargs = {"assignment": args.assignment} if "#" in args.sample else {}
    s = read_sample(args.sample, **kwargs)
    for k, v in s.summary().items():
        print(f"{k:>28}: {v}")
    if s.ground_truth is not None:
        print(f"{'ground truth classes':>28}: {s.ground_truth['class'].value_counts().to_dict()}")
    return 0


def cmd_list(args) -> int:
    from stx_platform.sources import list_samples

    refs = list_samples(args.url)
    for r in refs:
        print(r)
    if not refs:
        print(f"no samples under {args.url}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stx", description="stx-platform: spatial transcriptomics -> nuclei "
                                "segmentation and classification training data")
    p.add_argument("--version", action="version", version=f"stx-platform {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    from stx_platform.synth.generate import DEFAULT_CELLS, DEFAULT_SEED, DEFAULT_SLIDES
    from stx_platform.synth.organs import RECIPES

    s = sub.add_parser("synth", help="write synthetic Xenium slides with ground truth (HEST-1k layout or raw "
                                     "Xenium bundles)")
    s.add_argument("--out", default=DEFAULT_HEST_OUT, help=f"output URL (folder or s3://); default {DEFAULT_HEST_OUT}")
    s.add_argument("--slides", type=int, default=DEFAULT_SLIDES)
    s.add_argument("--seed", type=int, default=DEFAULT_SEED)
    s.add_argument("--organs", nargs="+", metavar="ORGAN", help=f"cycled over slides; any of: {', '.join(RECIPES)}")
    s.add_argument("--cells", type=int, default=DEFAULT_CELLS, help="cells per slide (>= 200; 200000 for benchmarks)")
    s.add_argument("--layout", choices=("hest", "xenium"), default="hest")
    s.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    s.set_defaults(func=cmd_synth)

    sp = sub.add_parser("synth-pannuke", help="write a synthetic PanNuke-format validation fold")
    sp.add_argument("--out", default=DEFAULT_PANNUKE_OUT)
    sp.add_argument("--n", type=int, default=64, help="number of 256x256 images")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_synth_pannuke)

    i = sub.add_parser("inspect", help="read one sample (ROOT#ID for HEST, or a Xenium bundle folder) and summarise it")
    i.add_argument("sample")
    i.add_argument("--assignment", choices=("cell_id", "nucleus", "polygon"), default="cell_id",
                   help="HEST: how transcripts go to nuclei (default: by cell_id)")
    i.set_defaults(func=cmd_inspect)

    ls = sub.add_parser("list", help="list the samples under a URL")
    ls.add_argument("url")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
