"""What a CPU-trained ST model lacks on an unseen organ: train the ST model once per variant of
the training settings (a preset plus ``--set`` overrides), on the training organs of an
experiment that ``bench/experiment.sh`` (or ``stx experiment table2``) has built, and score each
on the held-out organs' patches as Table 2 and Table 3 do. One row per variant, with its time.

    python bench/heldout_levers.py --out stx-data/bench-experiment-cpu \\
        --variant base= --variant hed-strong=augmentation.stain_scale=0.2,augmentation.stain_shift=0.05
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="an experiment folder (stx experiment table2 --out)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=KEY=VALUE,KEY=VALUE",
                   help="a name and its train overrides (comma-separated; none after '=' for the preset as is)")
    p.add_argument("--num-cpus", type=int, default=None)
    args = p.parse_args()

    from stx_platform import storage
    from stx_platform.experiments import run as X
    from stx_platform.experiments.heldout import pooled
    from stx_platform.experiments.split import OrganSplit
    from stx_platform.labels.evaluate import score
    from stx_platform.ray_session import ray_session
    from stx_platform.training.config import TrainConfig
    from stx_platform.training.run import run_training

    state = storage.read_json(storage.join(args.out, X.STATE))
    split = OrganSplit(**state["split"])
    dataset = state["models"][X.ST]["key"]["dataset"]
    from stx_platform.build.manifest import done_slides

    refs = {s["sample_id"]: s["ref"] for s in done_slides(dataset) if s["sample_id"] in set(split.heldout)}
    validation = storage.read_json(storage.join(state["models"][X.ST]["run_dir"], "stx_run.json"))["validation"]
    print(f"held out: {', '.join(split.heldout_organs)}; training organs: {', '.join(split.train_organs)}", flush=True)
    rows = []
    for v in args.variant:
        name, _, sets = v.partition("=")
        overrides = [s for s in sets.split(",") if s]
        cfg = TrainConfig.load(None, overrides, preset=args.preset)
        n_st = X.patch_count(dataset, split.train)
        cfg = X.budgets(cfg, n_st, n_st)[X.ST]
        t0 = time.time()
        with ray_session(None, args.num_cpus):
            res = run_training(dataset, validation, cfg, storage_url=storage.join(args.out, "levers"),
                               name=f"{name}-{time.strftime('%H%M%S')}", mlflow_uri=f"sqlite:///{args.out}/levers.db",
                               sample_ids=split.train)
        setup = X.Setup(args.out, dataset, split, refs, validation, "")
        setup.models = {name: {"checkpoint": res.best_checkpoint}}
        truth, _ = X.heldout_truth(setup)
        scores = X.score_models(setup, truth, overlays=0, say=lambda m: None)
        m = scores[name]["evaluation"].metrics
        seen = scores[name]["nuclei"]
        t_all = pooled(truth)
        t3 = score(t_all[t_all.index.isin(seen.index)], seen)
        rows.append((name, " ".join(overrides) or "(preset)", m["bPQ"], m["f1"], m["macro_f1"], t3["macro_f1"],
                     t3["accuracy"], res.seconds))
        print(f"{name}: bPQ {m['bPQ']:.3f}  F1 {m['f1']:.3f}  macro F1 (matched) {m['macro_f1']:.3f}  "
              f"Table 3 macro F1 {t3['macro_f1']:.3f} acc {t3['accuracy']:.3f}  ({res.seconds:.0f} s; "
              f"best epoch {res.best_metrics.get('epoch')})", flush=True)
    print("\n| variant | overrides | bPQ | det. F1 | macro F1 (matched) | Table 3 macro F1 | Table 3 acc | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.3f} | {r[7]:.0f} |")


if __name__ == "__main__":
    main()
