"""ACTION++ against supervised-only on the real ACDC data at a CPU-sized protocol.

    .venv/bin/python bench/small_acdc.py                      # ../shared/data/ACDC, 3 labeled patients
    .venv/bin/python bench/small_acdc.py --size 128 --finetune 2000 --device cuda

Both runs use the same labeled patients (the first of train_slices.list), the same total number of
iterations, the same seed and network; ACTION++ also sees the other training slices, unlabeled.  Both
are evaluated on the validation volumes (val.list; the test volumes are held out) with the paper's
metrics (medpy, voxel units).  Prints both tables and the difference in mean Dice.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ACTIONPlusPlusLib.config import preset  # noqa: E402
from ACTIONPlusPlusLib.data import load_dataset  # noqa: E402
from ACTIONPlusPlusLib.evaluation import evaluate_cases  # noqa: E402
from ACTIONPlusPlusLib.metrics import format_table  # noqa: E402
from ACTIONPlusPlusLib.model_io import load_model  # noqa: E402
from ACTIONPlusPlusLib.training import train  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ACDC")
    parser.add_argument("--labeled", type=int, default=3, help="labeled patients (3 = 5%%, 7 = 10%%)")
    parser.add_argument("--size", type=int, default=64, help="network input size (paper: 256)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--joint", type=int, default=100)
    parser.add_argument("--finetune", type=int, default=400)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "small_acdc")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"ACDC data not found at {args.data}", file=sys.stderr)
        return 2
    local = max(8, args.size // 4)
    cfg = preset("acdc", patch_size=[args.size, args.size], pretrain_warmup_iterations=args.warmup,
                 pretrain_joint_iterations=args.joint, finetune_iterations=args.finetune,
                 local_window=local, local_stride=local // 2, local_pool=min(8, local // 2),
                 device=args.device, seed=args.seed, log_every=25, checkpoint_every=10**9)
    train_set = load_dataset(args.data, cfg, labeled=args.labeled, splits=("train",))
    val = load_dataset(args.data, cfg, splits=("val",)).val
    print(f"ACDC: {len(train_set.labeled)} labeled slices ({args.labeled} patients), {len(train_set.unlabeled)} unlabeled "
          f"slices, {len(val)} validation volumes; {args.size}x{args.size}, {cfg.total_iterations} iterations each, "
          f"torch {torch.__version__} on {args.device}", flush=True)
    tables, means = [], {}
    for name, mode in (("ACTION++", "actionpp"), ("supervised-only", "supervised")):
        run_cfg = cfg.replace(mode=mode)
        started = time.perf_counter()
        result = train(run_cfg, train_set.labeled, train_set.unlabeled if mode == "actionpp" else [], args.out / mode)
        seconds = time.perf_counter() - started
        model, model_cfg = load_model(result.model_path)
        evaluation = evaluate_cases(model, model_cfg, val)
        means[name] = evaluation.summary["mean"]["dice"]
        tables.append(format_table(evaluation.summary, cfg.foreground_names,
                                   f"{name}: {args.labeled} labeled patients, validation volumes ({seconds:.0f} s training)"))
        print(tables[-1] + "\n", flush=True)
    delta = 100 * (means["ACTION++"] - means["supervised-only"])
    print(f"mean Dice: ACTION++ {100 * means['ACTION++']:.2f}, supervised-only {100 * means['supervised-only']:.2f} "
          f"({delta:+.2f} points)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
