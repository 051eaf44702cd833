"""Which class a trained model gives each ground-truth voxel of the validation volumes, and class shares.

    .venv/bin/python bench/confusion.py RUN/actionpp/model.pt [RUN/supervised/model.pt ...]
    .venv/bin/python bench/confusion.py --shares --labeled 3     # class shares, labeled vs unlabeled
    .venv/bin/python bench/confusion.py --fragments RUN/paste_only/model.pt   # also: stray regions

For each model: the confusion matrix (rows: ground truth, columns: prediction, thousands of voxels)
over the ACDC validation volumes (val.list), predicted as ``evaluate`` predicts them.  It showed
where RV went under the exact distribution alignment (``alignment_tolerance=1``; seed 3, 128x128, 3
patients): 23.3 thousand ground-truth RV voxels of the validation volumes labeled LV, against 4.9
thousand for supervised-only and 8.0 thousand with the factor-2 band (``alignment_tolerance=2``).
``--shares`` prints the ground-truth class shares of the labeled training slices and of the ones
ACTION++ treats as unlabeled (their labels are on disk; training never reads them), i.e. how far the
labeled sample's shares are from the rest.  ``--fragments`` also prints, per class, the share of its
predicted voxels that lie outside the class's largest connected region of their slice (what
``pseudo_largest_component`` would relabel background, ``training/components.py``) and how many of
those are truly that class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ACTIONPlusPlusLib.config import preset  # noqa: E402
from ACTIONPlusPlusLib.data import load_dataset  # noqa: E402
from ACTIONPlusPlusLib.evaluation import evaluate_cases  # noqa: E402
from ACTIONPlusPlusLib.model_io import load_model  # noqa: E402
from ACTIONPlusPlusLib.training.components import keep_largest_components  # noqa: E402


def confusion(predictions: dict, cases, num_classes: int) -> np.ndarray:
    """(C, C) voxel counts: rows ground truth, columns prediction."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for case in cases:
        truth = np.asarray(case.label).astype(np.int64).ravel()
        pred = np.asarray(predictions[case.id]).astype(np.int64).ravel()
        matrix += np.bincount(truth * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)
    return matrix


def fragments(predictions: dict, cases, num_classes: int) -> np.ndarray:
    """(C, 3) voxel counts per class: predicted, predicted outside the class's largest region of their
    slice, and of those the ones whose ground truth is that class."""
    counts = np.zeros((num_classes, 3), dtype=np.int64)
    for case in cases:
        truth = np.asarray(case.label).astype(np.int64)
        pred = np.asarray(predictions[case.id]).astype(np.int64)
        kept = keep_largest_components(torch.from_numpy(pred), num_classes).numpy()  # slices as images
        for k in range(1, num_classes):
            outside = (pred == k) & (kept != k)
            counts[k] += [(pred == k).sum(), outside.sum(), (outside & (truth == k)).sum()]
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ACDC")
    parser.add_argument("--shares", action="store_true", help="print the labeled and unlabeled class shares")
    parser.add_argument("--labeled", type=int, default=3, help="labeled patients (with --shares)")
    parser.add_argument("--fragments", action="store_true",
                        help="per class: predicted voxels outside the largest region of their slice")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"ACDC data not found at {args.data}", file=sys.stderr)
        return 2
    if not args.models and not args.shares:
        parser.error("give model.pt files, --shares, or both")
    base = preset("acdc")
    names = base.class_names
    if args.shares:
        train_set = load_dataset(args.data, base, labeled=args.labeled, splits=("train",))
        counts = {"labeled": np.zeros(base.num_classes), "unlabeled": np.zeros(base.num_classes)}
        for case in train_set.labeled:
            counts["labeled"] += np.bincount(np.asarray(case.label).astype(np.int64).ravel(), minlength=base.num_classes)
        for case in train_set.unlabeled:  # the labels ACTION++ never reads, straight from the file
            with h5py.File(case.path, "r") as f:
                counts["unlabeled"] += np.bincount(f["label"][:].astype(np.int64).ravel(), minlength=base.num_classes)
        for split, c in counts.items():
            print(f"{split:>9} ({args.labeled} labeled patients): "
                  + "  ".join(f"{n} {100 * v / c.sum():.2f} %" for n, v in zip(names, c)))
    for path in args.models:
        model, cfg = load_model(path)
        val = load_dataset(args.data, cfg, splits=("val",)).val
        evaluation = evaluate_cases(model, cfg, val, keep_predictions=True)
        matrix = confusion(evaluation.predictions, val, cfg.num_classes)
        print(f"\n{path}: rows ground truth, columns prediction, thousands of voxels ({len(val)} volumes)")
        print(" " * 12 + "".join(f"{n:>12}" for n in cfg.class_names))
        for name, row in zip(cfg.class_names, matrix):
            print(f"{name:>12}" + "".join(f"{v / 1000:12.1f}" for v in row))
        if args.fragments:
            for name, (predicted, outside, right) in zip(cfg.class_names[1:],
                                                        fragments(evaluation.predictions, val, cfg.num_classes)[1:]):
                print(f"  {name}: {predicted / 1000:.1f} thousand predicted, {100 * outside / max(predicted, 1):.1f} % "
                      f"outside its largest region of the slice, {100 * right / max(outside, 1):.1f} % of those truly {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
