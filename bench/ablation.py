"""The ablation arms shared by ``bench/small_acdc.py`` and ``bench/small_la.py`` (the paper's Table 3).

Each arm adds one part of ACTION++ to the one before it, on the same labeled data, budget, seed and
network:

==================  ==========================================================================
``supervised``      supervised-only on the labeled images (the plain baseline)
``supervised_paste`` the fair baseline: supervised, with the same box copy-paste among labeled
                    images as ACTION++'s strong view (``supervised_copy_paste``)
``paste_only``      ACTION++'s fine-tuning with the pseudo-label, AnCo and SAACL weights at 0: the
                    labeled ground truth pasted into unlabeled images, nothing learned from the
                    unlabeled pixels
``pseudo``          + the teacher's pseudo-labels on the unlabeled pixels
``anco``            + anatomical contrast (AnCo)
``saacl``           + SAACL: every fine-tuning part, no pre-training
``actionpp``        + pre-training: ACTION++ as shipped (the preset's defaults)
==================  ==========================================================================

``--set`` overrides apply to every ACTION++ arm (those after ``supervised_paste``), ``--set-both`` to
every arm.  The arm's own settings come last, so an ablation is never undone by an override.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

# fine-tuning only: pre-training neither from the budget nor from the cache
NO_PRETRAINING = {"budget_warmup_fraction": 0.0, "budget_joint_fraction": 0.0, "pretrain_cache_iterations": 0}

ARMS: dict[str, tuple[str, dict]] = {
    "supervised": ("supervised", {"supervised_copy_paste": False}),
    "supervised_paste": ("supervised", {"supervised_copy_paste": True}),
    "paste_only": ("actionpp", {**NO_PRETRAINING, "weight_unsup": 0.0, "weight_anco": 0.0, "weight_saacl": 0.0}),
    "pseudo": ("actionpp", {**NO_PRETRAINING, "weight_anco": 0.0, "weight_saacl": 0.0}),
    "anco": ("actionpp", {**NO_PRETRAINING, "weight_saacl": 0.0}),
    "saacl": ("actionpp", NO_PRETRAINING),
    "actionpp": ("actionpp", {}),
}

# the two arms of the historical last line ``mean Dice: ACTION++ X, supervised-only Y (+D points)``
HEADLINE = ("actionpp", "supervised")


def arms_argument(text: str) -> list[str]:
    """``--arms``: a comma-separated subset of :data:`ARMS`, or ``all`` (argparse type: a typo is an
    error, not an empty run)."""
    if text.strip() == "all":
        return list(ARMS)
    arms = [a.strip() for a in text.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join(ARMS)} or all")
    return [a for a in ARMS if a in arms]  # the table's order


def arm_config(base, arm: str, seed: int, overrides: dict, both: dict):
    """The config of ``arm`` at ``seed``: the base, then ``--set-both``, ``--set`` (ACTION++ arms), the arm."""
    mode, own = ARMS[arm]
    return base.replace(mode=mode, seed=seed, **{**both, **(overrides if mode == "actionpp" else {}), **own})


def uses_unlabeled(arm: str) -> bool:
    return ARMS[arm][0] == "actionpp"


# iterations between the arms' checkpoints: what a run killed outright (a session's or a lease's end)
# loses; SIGTERM and Ctrl-C save one before stopping.  A checkpoint reads state and changes no figure.
CHECKPOINT_EVERY = 50


def train_arm(cfg, labeled: list, unlabeled: list, run_dir: Path, callback: Callable | None, resume: bool,
              should_stop: Callable[[], bool] | None = None):
    """Train one arm into ``run_dir`` (``training.train``'s result).  Without ``resume`` an earlier run
    there is moved aside and the arm starts over.  With ``resume`` an arm that left a checkpoint
    continues from it exactly (a finished one only exports its model again) and one that left none
    starts, so one ``--resume`` finishes a table cut off anywhere.  A run ``should_stop`` stopped says
    on stderr where its checkpoint is and how to continue."""
    from ACTIONPlusPlusLib.training import train
    from ACTIONPlusPlusLib.training.loop import CHECKPOINT_NAME

    continues = resume and (Path(run_dir) / CHECKPOINT_NAME).is_file()
    result = train(cfg, labeled, unlabeled, run_dir, callback=callback, resume=continues, overwrite=not continues,
                   should_stop=should_stop)
    if result.stopped:
        print(f"stopped: {run_dir} saved to {result.checkpoint_path}; rerun the same command with --resume to "
              "continue", file=sys.stderr, flush=True)
    return result


def summary_lines(results: dict[str, list[float]], seeds: list[int]) -> list[str]:
    """``arm <name>: mean <X.XX> over seeds <s>: <v>, ...`` for every arm that ran, in the table's order."""
    lines = []
    for arm in ARMS:
        values = results.get(arm)
        if values:
            lines.append(f"arm {arm}: mean {100 * statistics.mean(values):.2f} over seeds "
                         + ", ".join(f"{s}: {100 * v:.2f}" for s, v in zip(seeds, values)))
    return lines


def headline_line(results: dict[str, list[float]]) -> str:
    """The last line both benches have always printed (kept as it is: scripts read it)."""
    ran = {arm: values for arm, values in results.items() if values}
    if not all(arm in ran for arm in HEADLINE):
        return "; ".join(f"mean Dice: {arm} {100 * statistics.mean(v):.2f} (" + ", ".join(f"{100 * x:.2f}" for x in v) + ")"
                         for arm, v in ran.items())
    ours, theirs = statistics.mean(ran["actionpp"]), statistics.mean(ran["supervised"])
    return f"mean Dice: ACTION++ {100 * ours:.2f}, supervised-only {100 * theirs:.2f} ({100 * (ours - theirs):+.2f} points)"
