"""ACTION++ against supervised-only on the real ACDC data, at a budget a CPU (or a GPU) can afford.

    .venv/bin/python bench/small_acdc.py                                   # quick: 64x64, 600 iterations, 3 patients
    .venv/bin/python bench/small_acdc.py --seeds 1337,1,2                  # several seeds: mean and each seed
    .venv/bin/python bench/small_acdc.py --size 128 --budget 2000 --labeled 7
    .venv/bin/python bench/small_acdc.py --size 256 --budget 0 --device cuda   # the paper's protocol (30K)
    .venv/bin/python bench/small_acdc.py --set pseudo_distribution_alignment=false   # an ablation
    .venv/bin/python bench/small_acdc.py --arms all --seeds 1337,1,2       # the ablation table (bench/ablation.py)

Every arm (bench/ablation.py: supervised, supervised_paste, paste_only, pseudo, anco, saacl, actionpp) uses the same labeled patients (the first of train_slices.list), the same total number of
iterations (``--budget``, laid out over the phases by ACTIONPlusPlusLib/budget.py; 0 = the preset's
explicit paper schedule), the same seed and network; ACTION++ also sees the other training slices,
unlabeled.  Both are evaluated on the validation volumes (val.list; the test volumes are held out) with
the paper's metrics (medpy, voxel units).  With ``--other-weights`` the Dice of the ACTION++ weights not
exported (student or EMA teacher, read from the run's checkpoint) is printed too.  Before the last line,
one line per arm: ``arm <name>: mean <X.XX> over seeds <s>: <v>, ...``; the last line is
``mean Dice: ACTION++ X, supervised-only Y (+D points)`` (means over the seeds).
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
from ACTIONPlusPlusLib.evaluation import evaluate_cases  # noqa: E402
from ACTIONPlusPlusLib.metrics import format_table  # noqa: E402
from ACTIONPlusPlusLib.model_io import load_model  # noqa: E402
from ACTIONPlusPlusLib.models import build_network  # noqa: E402
from ACTIONPlusPlusLib.cli import StopFlag  # noqa: E402
from ACTIONPlusPlusLib.training.batches import BatchSource  # noqa: E402
from ACTIONPlusPlusLib.training.checkpoint import load_checkpoint  # noqa: E402
from ACTIONPlusPlusLib.training.export import export_network  # noqa: E402
from ablation import (ARMS, CHECKPOINT_EVERY, arm_config, arms_argument, headline_line, summary_lines,  # noqa: E402,F401
                      train_arm, uses_unlabeled)


def _other_weights_dice(run_dir: Path, cfg, val, labeled, unlabeled) -> tuple[str, float]:
    """Mean Dice of the ACTION++ weights that model.pt does not hold (student or teacher), exported as
    train() would export them (training/export.py)."""
    other = "student" if cfg.export_weights == "teacher" else "teacher"
    state = load_checkpoint(run_dir / "checkpoint.pt", map_location="cpu")
    network = build_network(cfg)
    network.load_state_dict(state[other])
    model = export_network(cfg, network, BatchSource(cfg, labeled, unlabeled, torch.device("cpu")),
                           teacher=other == "teacher")
    return other, evaluate_cases(model, cfg, val).summary["mean"]["dice"]


def acdc_config(size: int, **settings):
    """The ACDC preset at ``size`` x ``size``, its local windows (spec 5.3) scaled with the image: a
    quarter of it (at least 8 pixels), half-overlapping, pooled to at most 8 cells."""
    local = max(8, size // 4)
    return preset("acdc", patch_size=[size, size], local_window=local, local_stride=local // 2,
                  local_pool=min(8, local // 2), **settings)


def progress_printer(name: str):
    """A training callback that prints one line every 100 iterations (stage, loss, s/it, pseudo-labels)."""
    def callback(event: dict) -> None:
        if event.get("event") == "warning":
            print(f"  [{name}] warning: {event['message']}", file=sys.stderr, flush=True)
        if event.get("event") != "progress" or event["overall_iteration"] % 100:
            return
        line = (f"  [{name}] {event['phase']} {event['overall_iteration']}/{event['overall_total']} "
                f"loss {event['loss']:.3f} {event['seconds_per_iteration']:.2f} s/it")
        if event["phase"] in ("warmup", "joint"):  # pre-training: each term (global, local, dense, sup)
            line += " (" + " ".join(f"{k} {v:.3f}" for k, v in event.get("losses", {}).items() if k != "total") + ")"
        pl = event.get("pseudo_labels")
        if pl:
            line += (" | pseudo " + " ".join(f"{k}:{100 * v:.1f}" for k, v in pl["pseudo_fraction"].items())
                     + " | taught " + " ".join(f"{k}:{100 * v:.1f}" for k, v in pl["taught_fraction"].items())
                     + " | labeled " + " ".join(f"{k}:{100 * v:.1f}" for k, v in pl["labeled_fraction"].items())
                     + f" | mask {100 * pl['mask_fraction']:.0f}%"
                     + (f" | teacher Dice {100 * pl['teacher_dice']:.0f}" if "teacher_dice" in pl else ""))
        print(line, file=sys.stderr, flush=True)
    return callback


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ACDC")
    parser.add_argument("--labeled", type=int, default=3, help="labeled patients (3 = 5%%, 7 = 10%%)")
    parser.add_argument("--size", type=int, default=64, help="network input size (paper: 256)")
    parser.add_argument("--budget", type=int, default=600,
                        help="total iterations of each arm (0 = the preset's paper schedule, 30K)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --seed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every ACTION++ arm (ablations)")
    parser.add_argument("--set-both", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both arms (runtime settings, e.g. cpu_bf16=true)")
    parser.add_argument("--arms", type=arms_argument, default="actionpp,supervised",
                        help="comma-separated arms, or all (the ablation table): " + ", ".join(ARMS))
    parser.add_argument("--other-weights", action="store_true",
                        help="also score the ACTION++ weights model.pt does not hold (student or teacher)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "small_acdc")
    parser.add_argument("--resume", action="store_true",
                        help="continue each arm from its checkpoint in --out (an arm cut off, e.g. by a lease's or a "
                             "session's end); arms with none start, finished ones are scored again")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"ACDC data not found at {args.data}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    overrides = dict(kv.split("=", 1) for kv in args.set)
    both = dict(kv.split("=", 1) for kv in args.set_both)
    base = acdc_config(args.size, budget_iterations=args.budget, device=args.device, log_every=25,
                       checkpoint_every=CHECKPOINT_EVERY)
    train_set = load_dataset(args.data, base, labeled=args.labeled, splits=("train",))
    val = load_dataset(args.data, base, splits=("val",)).val
    print(f"ACDC: {len(train_set.labeled)} labeled slices ({args.labeled} patients), {len(train_set.unlabeled)} "
          f"unlabeled slices, {len(val)} validation volumes; {args.size}x{args.size}, {base.total_iterations} "
          f"iterations each (phases {'+'.join(str(n) for n in (lambda l: (l.warmup, l.joint, l.finetune))(base.phase_lengths()))}), seeds {seeds}, torch {torch.__version__} on "
          f"{args.device}" + (f"; ACTION++ overrides {overrides}" if overrides else "") + (f"; both arms {both}" if both else ""), flush=True)
    results: dict[str, list[float]] = {arm: [] for arm in args.arms}
    stop = StopFlag()  # SIGTERM / Ctrl-C: the arm saves a checkpoint, --resume continues it
    for seed in seeds:
        for arm in args.arms:
            run_cfg = arm_config(base, arm, seed, overrides, both)
            run_dir = args.out / f"seed{seed}" / arm
            started = time.perf_counter()
            result = train_arm(run_cfg, train_set.labeled, train_set.unlabeled if uses_unlabeled(arm) else [],
                               run_dir, progress_printer(arm), args.resume, stop)
            seconds = time.perf_counter() - started
            if result.stopped:  # SIGTERM or Ctrl-C: the checkpoint is saved (train_arm said where)
                return 130
            model, model_cfg = load_model(result.model_path)
            evaluation = evaluate_cases(model, model_cfg, val)
            results[arm].append(evaluation.summary["mean"]["dice"])
            print(format_table(evaluation.summary, base.foreground_names,
                               f"seed {seed}, arm {arm}: {args.labeled} labeled patients, validation volumes "
                               f"({seconds:.0f} s training)"), flush=True)
            if arm == "actionpp" and args.other_weights:
                other, dice = _other_weights_dice(run_dir, run_cfg, val, train_set.labeled, train_set.unlabeled)
                print(f"  (ACTION++ {other} weights, not exported: mean Dice {100 * dice:.2f}; exported: "
                      f"{run_cfg.export_weights})", flush=True)
            print(flush=True)
        print(f"seed {seed}: " + ", ".join(f"{arm} {100 * results[arm][-1]:.2f}" for arm in args.arms) + "\n", flush=True)
    for line in summary_lines(results, seeds):
        print(line)
    print(headline_line(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
