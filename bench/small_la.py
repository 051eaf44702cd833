"""ACTION++ against supervised-only on the real LA data (3D V-Net) at a CPU-sized budget.

    .venv/bin/python bench/small_la.py                          # 4 labeled + 12 unlabeled, 8 held out
    .venv/bin/python bench/small_la.py --patch 112,112,80 --budget 0 --device cuda   # the paper's window and schedule

Of the 24 LA scans in ../shared/data/LA (the first ids of train.list), the first ``--labeled`` are
labeled, the next ``--unlabeled`` are given to ACTION++ without their labels, and the last ``--test``
are held out and evaluated (sliding window, ``inference.default_stride_3d`` of the window; the paper's
18 x 18 x 4 for its 112 x 112 x 80 window).  Same labeled scans, iterations (``--budget``), seed and
network for every arm (bench/ablation.py; ``--arms all`` runs the ablation table).  Before the last line,
one line per arm: ``arm <name>: mean <X.XX> over seeds <s>: <v>, ...``; the last line is
``mean Dice: ACTION++ X, supervised-only Y (+D points)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ACTIONPlusPlusLib.config import preset  # noqa: E402
from ACTIONPlusPlusLib.data import load_dataset  # noqa: E402
from ACTIONPlusPlusLib.data.types import Case  # noqa: E402
from ACTIONPlusPlusLib.evaluation import evaluate_cases  # noqa: E402
from ACTIONPlusPlusLib.metrics import format_table  # noqa: E402
from ACTIONPlusPlusLib.model_io import load_model  # noqa: E402
from ACTIONPlusPlusLib.cli import StopFlag  # noqa: E402
from ablation import (ARMS, CHECKPOINT_EVERY, arm_config, arms_argument, headline_line, summary_lines,  # noqa: E402
                      train_arm, uses_unlabeled)
from small_acdc import _other_weights_dice, progress_printer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "LA")
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=12)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--patch", default="80,80,48", help="network window (x,y,z); paper: 112,112,80")
    parser.add_argument("--budget", type=int, default=400, help="total iterations of each arm (0 = the paper's 20K)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", default="1337")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every ACTION++ arm (ablations)")
    parser.add_argument("--set-both", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both arms (runtime settings, e.g. cpu_bf16=true)")
    parser.add_argument("--arms", type=arms_argument, default="actionpp,supervised",
                        help="comma-separated arms, or all (the ablation table): " + ", ".join(ARMS))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "small_la")
    parser.add_argument("--resume", action="store_true",
                        help="continue each arm from its checkpoint in --out (an arm cut off, e.g. by a lease's or a "
                             "session's end); arms with none start, finished ones are scored again")
    parser.add_argument("--other-weights", action="store_true",
                        help="also score the ACTION++ weights model.pt does not hold (the student), exported as "
                             "train() would export them (one more sliding-window evaluation)")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"LA data not found at {args.data}", file=sys.stderr)
        return 2
    patch = [int(p) for p in args.patch.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = dict(kv.split("=", 1) for kv in args.set)
    both = dict(kv.split("=", 1) for kv in args.set_both)
    base = preset("la", patch_size=patch, budget_iterations=args.budget, device=args.device, log_every=25,
                  checkpoint_every=CHECKPOINT_EVERY)
    every = load_dataset(args.data, base, labeled=args.labeled + args.unlabeled + args.test, splits=("train",)).labeled
    needed = args.labeled + args.unlabeled + args.test
    if len(every) < needed:
        print(f"need {needed} LA scans, found {len(every)} in {args.data}", file=sys.stderr)
        return 2
    labeled = every[: args.labeled]
    unlabeled = [Case(c.id, c.image, None, c.spacing) for c in every[args.labeled : args.labeled + args.unlabeled]]
    test = every[needed - args.test : needed]
    lengths = base.phase_lengths()
    print(f"LA: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(test)} held-out scans; window "
          f"{'x'.join(map(str, patch))}, {lengths.total} iterations each (phases {lengths.warmup}+{lengths.joint}+"
          f"{lengths.finetune}), seeds {seeds}, torch {torch.__version__} on {args.device}"
          + (f"; ACTION++ overrides {overrides}" if overrides else "") + (f"; both arms {both}" if both else ""), flush=True)
    results: dict[str, list[float]] = {arm: [] for arm in args.arms}
    stop = StopFlag()  # SIGTERM / Ctrl-C: the arm saves a checkpoint, --resume continues it
    for seed in seeds:
        for arm in args.arms:
            run_cfg = arm_config(base, arm, seed, overrides, both)
            run_dir = args.out / f"seed{seed}" / arm
            started = time.perf_counter()
            result = train_arm(run_cfg, labeled, unlabeled if uses_unlabeled(arm) else [], run_dir,
                               progress_printer(arm), args.resume, stop)
            seconds = time.perf_counter() - started
            if result.stopped:  # SIGTERM or Ctrl-C: the checkpoint is saved (train_arm said where)
                return 130
            model, model_cfg = load_model(result.model_path)
            evaluation = evaluate_cases(model, model_cfg, test)
            results[arm].append(evaluation.summary["mean"]["dice"])
            print(format_table(evaluation.summary, base.foreground_names,
                               f"seed {seed}, arm {arm}: {len(labeled)} labeled scans, {len(test)} held-out scans "
                               f"({seconds:.0f} s training)") + "\n", flush=True)
            if arm == "actionpp" and args.other_weights:
                other, dice = _other_weights_dice(run_dir, run_cfg, test, labeled, unlabeled)
                print(f"  (ACTION++ {other} weights, not exported: mean Dice {100 * dice:.2f}; exported: "
                      f"{run_cfg.export_weights})", flush=True)
    for line in summary_lines(results, seeds):
        print(line)
    print(headline_line(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
