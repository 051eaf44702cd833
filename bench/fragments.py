"""How fragmented trained LA models' predictions are on the held-out scans of ``bench/small_la.py``.

    .venv/bin/python bench/fragments.py RUN/seed1337/actionpp/model.pt RUN/seed1337/supervised/model.pt

For each model and held-out scan (the same split as ``bench/small_la.py``: the last ``--test`` of the
first ``--labeled + --unlabeled + --test`` ids of train.list): the Dice as ``evaluate`` scores it, the
number of connected components (26-connected) of the predicted atrium, the predicted volume over the
true one, and the Dice and HD95 with only the largest component kept.  The evaluation protocol (spec
8.2) keeps every component; this diagnostic says how much of a model's error lies in fragments away
from the atrium, which a short run leaves and longer training removes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ACTIONPlusPlusLib.config import preset  # noqa: E402
from ACTIONPlusPlusLib.data import load_dataset  # noqa: E402
from ACTIONPlusPlusLib.inference import predict_case  # noqa: E402
from ACTIONPlusPlusLib.metrics import binary_metrics  # noqa: E402
from ACTIONPlusPlusLib.model_io import load_model  # noqa: E402


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 26-connected component of ``mask`` and the number of components."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask, count
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes)), count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="model.pt files of LA runs")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "LA")
    parser.add_argument("--labeled", type=int, default=4)
    parser.add_argument("--unlabeled", type=int, default=12)
    parser.add_argument("--test", type=int, default=8)
    args = parser.parse_args()

    first = args.labeled + args.unlabeled
    every = load_dataset(args.data, preset("la"), labeled=first + args.test, splits=("train",)).labeled
    test = every[first:first + args.test]
    for path in args.models:
        model, cfg = load_model(path)
        rows = []
        for case in test:
            pred = predict_case(model, case, cfg).labels > 0
            truth = np.asarray(case.label) > 0
            kept, count = largest_component(pred)
            whole, largest = binary_metrics(pred, truth), binary_metrics(kept, truth)
            rows.append((whole["dice"], largest["dice"], count, pred.sum() / max(truth.sum(), 1),
                         whole["hd95"], largest["hd95"]))
            print(f"{path}  {case.id}: Dice {100 * rows[-1][0]:.2f}, largest component {100 * rows[-1][1]:.2f}, "
                  f"{count} components, predicted/true volume {rows[-1][3]:.2f}, HD95 {rows[-1][4]:.1f} -> "
                  f"{rows[-1][5]:.1f}", flush=True)
        r = np.asarray(rows, dtype=float)
        print(f"{path}: mean Dice {100 * r[:, 0].mean():.2f}, with the largest component kept {100 * r[:, 1].mean():.2f}; "
              f"components {r[:, 2].mean():.0f} (median {np.median(r[:, 2]):.0f}); empty predictions "
              f"{int((r[:, 2] == 0).sum())} of {len(r)}; HD95 {r[:, 4].mean():.2f} -> {r[:, 5].mean():.2f} voxels", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
