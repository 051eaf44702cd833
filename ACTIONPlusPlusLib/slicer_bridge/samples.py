"""Phantom sample data in the scene: try the whole loop without data."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import terminology
from .prediction_nodes import add_prediction_to_scene
from .volumes import volume_node_from_case


def add_phantom_sample(scene: Any, preset: str, num_labeled: int = 3, num_unlabeled: int = 4,
                       seed: int = 0) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """Add synthetic cases of ``preset`` to the scene, for trying the whole loop without data.

    Returns the labeled (volume, segmentation) pairs (segments named, coloured and coded like
    predictions) and the unlabeled volumes; every node is new.  ACDC: short-axis stacks with RV, Myo
    and LV; LA: a 3D atrium with a pulmonary vein (``data.phantoms``).
    """
    from ..data import phantoms

    preset = preset.lower()
    terminology.classes(preset)
    rng = np.random.default_rng(seed)
    pairs, unlabeled = [], []
    for index in range(num_labeled + num_unlabeled):
        name = f"ACTION++ {preset.upper()} phantom {index + 1}"
        if preset == "acdc":
            case = phantoms.cardiac_phantom_case(rng, name, num_slices=8, size=(128, 128))
            case.spacing = (1.5, 1.5, 8.0)
        else:
            case = phantoms.atrium_phantom_case(rng, name, shape=(40, 96, 96))
            case.spacing = (0.625, 0.625, 1.25)
        volume = volume_node_from_case(scene, case, name)
        if index < num_labeled:
            segmentation = add_prediction_to_scene(scene, case.label, volume, preset, name=f"{name} segmentation")
            pairs.append((volume, segmentation))
        else:
            unlabeled.append(volume)
    return pairs, unlabeled
