"""Checks of the user's selection before a job is written, on node IDs and names (so they run
without a scene): no labeled pair, a volume both labeled and unlabeled, a segmentation without the
preset's classes.

Pure Python for the Slicer panel: no Qt, no slicer, no torch at import time, so it is tested
without Slicer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def selection_problems(
    labeled_pairs: Sequence[tuple[str | None, str | None]],
    unlabeled_ids: Sequence[str],
    names: Mapping[str, str] | None = None,
) -> list[str]:
    """Problems with the cases picked for training, as messages for the panel (empty when fine).

    ``labeled_pairs`` holds (volume ID, segmentation ID); ``names`` maps IDs to display names.
    """
    names = names or {}

    def name(node_id: str | None) -> str:
        return names.get(node_id or "", node_id or "?")

    problems: list[str] = []
    if not labeled_pairs:
        problems.append("Add at least one labeled case (a volume and its segmentation) before training.")
    seen_volumes: dict[str, int] = {}
    for index, (volume_id, segmentation_id) in enumerate(labeled_pairs, start=1):
        if not volume_id or not segmentation_id:
            problems.append(f"Labeled case {index} needs both a volume and a segmentation.")
            continue
        if volume_id in seen_volumes:
            problems.append(f"Volume '{name(volume_id)}' is labeled twice (cases {seen_volumes[volume_id]} and {index}).")
        seen_volumes.setdefault(volume_id, index)
    for volume_id in unlabeled_ids:
        if volume_id in seen_volumes:
            problems.append(
                f"Volume '{name(volume_id)}' is both labeled (case {seen_volumes[volume_id]}) and checked as unlabeled: "
                "uncheck it in the unlabeled list."
            )
    return problems


def segments_problem(
    segmentation_name: str,
    segments: Sequence[tuple[str, str]] | Sequence[str],
    preset: str,
) -> str | None:
    """A message when a labeled segmentation holds none of the preset's classes (None when usable).

    ``segments`` are segment names or (name, serialised terminology entry) pairs; a segment counts when
    its name (or a synonym) or its SNOMED CT code names a class, as in the scene bridge.
    """
    from .. import terminology

    names = []
    for item in segments:
        name, entry = (item, "") if isinstance(item, str) else (item[0], item[1] or "")
        names.append(name)
        if terminology.class_value_for_segment_name(preset, name) is not None:
            return None
        if entry and terminology.class_value_for_terminology(preset, entry) is not None:
            return None
    classes = [info.name for info in terminology.classes(preset)]
    have = ", ".join(f"'{n}'" for n in names) if names else "no segments"
    return (
        f"Segmentation '{segmentation_name}' has {have}: none of the {preset.upper()} preset's segments "
        f"({', '.join(classes)}). Rename its segments (e.g. in Segment Editor) or pick the other preset."
    )


def unlabeled_candidates(volume_ids: Sequence[str], labeled_volume_ids: Iterable[str]) -> list[str]:
    """The scene's scalar volumes that are not already labeled, in scene order."""
    labeled = set(labeled_volume_ids)
    return [v for v in volume_ids if v not in labeled]


def unlabeled_rows(volume_ids: Sequence[str], labeled_volume_ids: Iterable[str],
                   chosen_ids: Iterable[str]) -> list[tuple[str, bool]]:
    """(volume ID, checked) for the unlabeled list: the scene's volumes that are not labeled, checked
    only when the user chose them.  Unlabeled volumes are opted in: a volume loaded (say) only to be
    segmented never joins a training run unless the user checks it."""
    chosen = set(chosen_ids)
    return [(v, v in chosen) for v in unlabeled_candidates(volume_ids, labeled_volume_ids)]


def predict_rows(volume_ids: Sequence[str], chosen_ids: Iterable[str]) -> list[tuple[str, bool]]:
    """(volume ID, checked) for the Prediction section's list: every volume of the scene (a labeled one
    may be predicted too), ticked when the user chose it; one job predicts all the ticked ones."""
    chosen = set(chosen_ids)
    return [(v, v in chosen) for v in volume_ids]
