"""ACTION++ must beat supervised-only where the product promises it, and its semi-supervised terms must
not fall behind what copy-paste alone gives.

The panel's quick budget on real ACDC scans (64x64, 600 iterations, 3 labeled patients; the
configuration of ``bench/small_acdc.py``), two seeds, three arms of the ablation bench
(bench/ablation.py): ACTION++ as shipped, supervised-only, and paste-only (ACTION++'s fine-tuning with
the pseudo-label, AnCo and SAACL weights at 0: labeled ground truth pasted into unlabeled images).
Same labeled slices, iterations, seed and network; scored on the 20 validation volumes.

Margins, from the measurements. This test's own runs (two threads) on two CPUs: an AMD EPYC without
AVX-512 (2026-12-06): ACTION++ 61.68 / 62.60, paste-only 59.26 (seed 1337), supervised-only 49.85 /
52.38 at seeds 1337 / 1; this project's AMD EPYC with AVX-512 (2026-12-07, the same configuration as
``OMP_NUM_THREADS=2 bench/small_acdc.py --arms all --seeds 1337,1,2``): ACTION++ 60.66 / 61.95,
paste-only 61.63 / 59.49, supervised-only 49.68 / 53.82.  So one seed of paste-only read 2.42 below
ACTION++ on one CPU and 0.97 above it on the other: rounding alone moves one run 2-3 points at this
budget, and a check on one seed sat at the edge of its tolerance.  The paste-only checks therefore use
the mean over both seeds (+0.75 for ACTION++ on the second CPU; over three to nine seeds
docs/BENCHMARKS.md has it ahead by 1.7 to 2.1).  The test asks for +3 per seed and +5 on the mean over
supervised-only (the spec's configuration, 9.30 against 40.86 at seed 1337, fails it by far); for
paste-only +3 over supervised-only on the mean (the copy-paste with unlabeled images works) and for
ACTION++ at most 1 point under paste-only on the mean: its own parts (pseudo-labels, AnCo, SAACL) add
1.7-2.1 points on many-seed means, but the test does not ask for their whole gain.  What it does not
catch: pseudo-labels with their foreground classes rotated (RV taught as Myo, Myo as LV, LV as RV)
scored 60.94 / 61.56 in this test against 60.66 / 61.95 (2026-12-07, this CPU, two threads).  Over six
seeds the rotation costs 1.51 (docs/BENCHMARKS.md), but two seeds cannot see it; that break fails
``test_semi_supervised_parts.py``, which checks the taught labels where the trainer makes them.  About
11 minutes on two cores with AVX-512, 20 without.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ACTIONPlusPlusLib.data import load_dataset
from ACTIONPlusPlusLib.evaluation import evaluate_cases
from ACTIONPlusPlusLib.model_io import load_model
from ACTIONPlusPlusLib.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import ablation  # noqa: E402
from small_acdc import acdc_config  # noqa: E402

SEEDS = (1337, 1)
PER_SEED_MARGIN = 0.03
MEAN_MARGIN = 0.05
PASTE_MARGIN = 0.03
PASTE_TOLERANCE = 0.01


@pytest.mark.slow
def test_actionpp_beats_supervised_only_at_the_quick_budget(acdc_root, tmp_path) -> None:
    base = acdc_config(64, budget_iterations=600, device="cpu", log_every=100, checkpoint_every=10**9)
    train_set = load_dataset(acdc_root, base, labeled=3, splits=("train",))
    val = load_dataset(acdc_root, base, splits=("val",)).val
    assert len(val) == 20 and train_set.unlabeled
    dice: dict[str, list[float]] = {"actionpp": [], "supervised": [], "paste_only": []}
    for seed in SEEDS:
        for arm in dice:
            cfg = ablation.arm_config(base, arm, seed, {}, {})
            result = train(cfg, train_set.labeled, train_set.unlabeled if ablation.uses_unlabeled(arm) else [],
                           tmp_path / f"{seed}-{arm}")
            model, model_cfg = load_model(result.model_path)
            dice[arm].append(evaluate_cases(model, model_cfg, val).summary["mean"]["dice"])
    report = {arm: [round(100 * v, 2) for v in values] for arm, values in dice.items()}
    print(f"mean Dice (%) per seed {SEEDS}: {report}")  # shown with pytest -rP
    for ours, theirs in zip(dice["actionpp"], dice["supervised"]):
        assert ours >= theirs + PER_SEED_MARGIN, report
    mean = {arm: sum(values) / len(values) for arm, values in dice.items()}
    assert mean["actionpp"] >= mean["supervised"] + MEAN_MARGIN, report
    assert mean["paste_only"] >= mean["supervised"] + PASTE_MARGIN, report
    assert mean["actionpp"] >= mean["paste_only"] - PASTE_TOLERANCE, report
