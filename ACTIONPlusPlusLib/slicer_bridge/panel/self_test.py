"""Small numpy helpers for the module's self-test (numpy imported lazily).

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations


def dice(prediction, reference, label: int) -> float:
    import numpy as np

    p = np.asarray(prediction) == label
    r = np.asarray(reference) == label
    denominator = p.sum() + r.sum()
    return 1.0 if denominator == 0 else float(2.0 * np.logical_and(p, r).sum() / denominator)


def chance_dice(reference, label: int) -> float:
    """Dice of the trivial guess 'everything is this class' (a floor that a trained model must beat)."""
    import numpy as np

    f = float((np.asarray(reference) == label).mean())
    return 2 * f / (1 + f)
