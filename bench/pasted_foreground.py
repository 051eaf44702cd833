"""How much of the labeled batch's anatomy the copy-paste box carries, per class, on the real data.

    .venv/bin/python bench/pasted_foreground.py     # ACDC 64x64 (3 patients) and LA 64x64x48 (4 scans)

The fine-tuning step pastes a box of each labeled image (and its ground truth) into an unlabeled one
(``mix_partner=labeled``).  This samples 200 steps' batches as the trainer does (same sampler, same
geometric augmentation, same box) and prints, per foreground class: the pasted pixels of the class per
step (mean, coefficient of variation, share of steps with none) and their ratio to the class's pixels
in the labeled batch.  In 2D the box covers half the slice and usually the centred heart; in 3D it is
a slab of a quarter of the depth (``cutmix_depth_fraction``).  docs/DESIGN.md (``pasted_dice``) quotes
its figures.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ACTIONPlusPlusLib.config import Config, preset  # noqa: E402
from ACTIONPlusPlusLib.data import load_dataset  # noqa: E402
from ACTIONPlusPlusLib.data.types import Case  # noqa: E402
from ACTIONPlusPlusLib.training import augment  # noqa: E402
from ACTIONPlusPlusLib.training.batches import BatchSource  # noqa: E402


def pasted_foreground(cfg: Config, labeled, unlabeled, steps: int = 200) -> None:
    source = BatchSource(cfg, labeled, unlabeled, torch.device("cpu"))
    host, dev = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    pasted: list[list[int]] = [[] for _ in range(cfg.num_classes)]
    in_labeled: list[list[int]] = [[] for _ in range(cfg.num_classes)]
    for _ in range(steps):
        x_l, y_l = source.labeled(cfg.finetune_labeled_batch, host, dev, cfg.geometric_augmentation)
        x_u = source.unlabeled(cfg.finetune_unlabeled_batch, host, dev, cfg.geometric_augmentation)
        masks = augment.cutmix_masks(len(x_u), tuple(x_u.shape[2:]), dev, x_u.device, cfg.cutmix_depth_fraction)
        blank = torch.zeros_like(x_u[:, 0])
        _, labels, _, from_labeled = augment.mix_pair(x_u, blank.long(), blank, x_l, y_l, masks)
        for c in range(1, cfg.num_classes):
            pasted[c].append(int(((labels == c) & from_labeled).sum()))
            in_labeled[c].append(int((y_l == c).sum()))
    box = 1.0 - float(masks.mean())
    print(f"{cfg.preset} {'x'.join(map(str, cfg.patch_size))}, {cfg.finetune_labeled_batch}+"
          f"{cfg.finetune_unlabeled_batch} per step, box {100 * box:.1f} % of each image, {steps} steps")
    for c in range(1, cfg.num_classes):
        mean = statistics.mean(pasted[c])
        cv = statistics.pstdev(pasted[c]) / mean if mean else float("nan")
        ratio = statistics.mean(p / max(l, 1) for p, l in zip(pasted[c], in_labeled[c]))
        none = sum(1 for p in pasted[c] if p == 0) / steps
        print(f"  {cfg.class_names[c]:>4}: pasted {mean:8.0f} px/step (cv {cv:.2f}, none in {100 * none:.1f} % of steps), "
              f"{100 * ratio:.1f} % of the labeled batch's")


def main() -> int:
    torch.set_num_threads(1)
    data = REPO.parent / "shared" / "data"
    if not (data / "ACDC").is_dir() or not (data / "LA").is_dir():
        print(f"needs ../shared/data/ACDC and ../shared/data/LA (looked in {data})", file=sys.stderr)
        return 2
    acdc = preset("acdc", patch_size=[64, 64], budget_iterations=600)
    train_set = load_dataset(data / "ACDC", acdc, labeled=3, splits=("train",))
    pasted_foreground(acdc, train_set.labeled, train_set.unlabeled[:200])
    la = preset("la", patch_size=[64, 64, 48], budget_iterations=400)
    scans = load_dataset(data / "LA", la, labeled=16, splits=("train",)).labeled
    pasted_foreground(la, scans[:4], [Case(c.id, c.image, None, c.spacing) for c in scans[4:16]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
