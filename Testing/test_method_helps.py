"""ACTION++ must beat supervised-only where the product promises it (issue 14, item 2).

The panel's quick budget on real ACDC scans (64x64, 600 iterations, 3 labeled patients; the
configuration of ``bench/small_acdc.py``), two seeds.  Both arms get the same labeled slices,
iterations, seed and network; ACTION++ also gets the other training slices without labels.  Scored
on the 20 validation volumes.

Margins, from the measurements (one thread, ``bench/small_acdc.py --seeds 1337,1``): ACTION++
60.07 / 60.07 against supervised-only 48.78 / 52.01, i.e. +11.29 and +8.06 points (with the exact
distribution alignment, ``alignment_tolerance=1``: 61.47 / 60.18; with one copy-paste direction as
well, ``mix_bidirectional=false``: 58.13 / 59.35; with the pasted labeled pixels taught by CE
alone as well, ``pasted_dice=false``: 54.13 / 56.20, +5.35 and +4.19).  The
supervised model is exported with BatchNorm statistics re-estimated on clean images
(training/export.py); before that fix it scored 44.84 / 33.31.  The test asks for the issue's +5 on
the mean and +3 on each seed: room for the run-to-run noise of another thread count, while the spec's
configuration (9.30 against 40.86 at seed 1337) fails it by far.  About 6 minutes on two cores.
"""

from __future__ import annotations

import pytest

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data import load_dataset
from ACTIONPlusPlusLib.evaluation import evaluate_cases
from ACTIONPlusPlusLib.model_io import load_model
from ACTIONPlusPlusLib.training import train

SEEDS = (1337, 1)
PER_SEED_MARGIN = 0.03
MEAN_MARGIN = 0.05


@pytest.mark.slow
def test_actionpp_beats_supervised_only_at_the_quick_budget(acdc_root, tmp_path) -> None:
    base = preset("acdc", patch_size=[64, 64], budget_iterations=600, local_window=16, local_stride=8,
                  local_pool=8, device="cpu", log_every=100, checkpoint_every=10**9)
    train_set = load_dataset(acdc_root, base, labeled=3, splits=("train",))
    val = load_dataset(acdc_root, base, splits=("val",)).val
    assert len(val) == 20 and train_set.unlabeled
    dice: dict[str, list[float]] = {"actionpp": [], "supervised": []}
    for seed in SEEDS:
        for mode in dice:
            cfg = base.replace(mode=mode, seed=seed)
            result = train(cfg, train_set.labeled, train_set.unlabeled if mode == "actionpp" else [],
                           tmp_path / f"{seed}-{mode}")
            model, model_cfg = load_model(result.model_path)
            dice[mode].append(evaluate_cases(model, model_cfg, val).summary["mean"]["dice"])
    report = {mode: [round(100 * v, 2) for v in values] for mode, values in dice.items()}
    for ours, theirs in zip(dice["actionpp"], dice["supervised"]):
        assert ours >= theirs + PER_SEED_MARGIN, report
    mean = {mode: sum(values) / len(values) for mode, values in dice.items()}
    assert mean["actionpp"] >= mean["supervised"] + MEAN_MARGIN, report
