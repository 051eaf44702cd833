"""The panel's view of the scene (slicer_bridge.node_selection) against slicer-core, and the blocking run
loop (slicer_bridge.blocking_run) with a scripted worker."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

from ACTIONPlusPlusLib.slicer_bridge import blocking_run  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.node_selection import (  # noqa: E402
    SOURCE_VOLUME_ATTRIBUTE,
    candidate_volumes,
    mark_sources,
    node_selection_problems,
    segment_entries,
    source_volume,
    voxel_count,
)
from ACTIONPlusPlusLib.slicer_bridge.results import PredictionImport  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.samples import add_phantom_sample  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def test_candidates_leave_out_labelmaps_hidden_volumes_and_our_outputs(scene):
    pairs, unlabeled = add_phantom_sample(scene, "acdc", num_labeled=1, num_unlabeled=2)
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a labelmap")
    hidden = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "hidden")
    hidden.SetHideFromEditors(True)
    ours = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "confidence")
    ours.SetAttribute(SOURCE_VOLUME_ATTRIBUTE, unlabeled[0].GetID())
    assert candidate_volumes(scene) == [pairs[0][0], *unlabeled]


def test_entries_problems_and_voxels(scene):
    (pair,), unlabeled = add_phantom_sample(scene, "acdc", num_labeled=1, num_unlabeled=1)
    volume, segmentation = pair
    assert [name for name, _entry in segment_entries(segmentation)] == ["RV", "Myo", "LV"]
    assert all(entry for _name, entry in segment_entries(segmentation))
    assert node_selection_problems([pair], unlabeled, "acdc") == []
    both = node_selection_problems([pair], [volume], "acdc")
    assert len(both) == 1 and "both labeled" in both[0] and volume.GetName() in both[0]
    wrong = node_selection_problems([pair], [], "la")
    assert len(wrong) == 1 and segmentation.GetName() in wrong[0]
    assert voxel_count([volume, None, *unlabeled]) == 2 * int(np.prod(volume.GetImageData().GetDimensions()))


def test_marked_predictions_point_back_at_their_volume(scene):
    (pair,), (other,) = add_phantom_sample(scene, "acdc", num_labeled=1, num_unlabeled=1)
    volume, segmentation = pair
    assert source_volume(scene, segmentation) is None
    confidence = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "confidence")
    mark_sources([PredictionImport("a", None, volume, segmentation, confidence),
                  PredictionImport("b", None, other, None, None, message="skipped")])
    assert source_volume(scene, segmentation) is volume
    assert confidence.GetAttribute(SOURCE_VOLUME_ATTRIBUTE) == volume.GetID()


class ScriptedWorker:
    """Hands out prepared batches of events, then stops; records a cancel."""

    def __init__(self, batches, exit_code=0, forever=False):
        self.batches, self.exit_code, self.forever = list(batches), exit_code, forever
        self.log_lines = ["a log line"]
        self.cancelled = False

    @property
    def is_running(self):
        return self.forever and not self.cancelled or bool(self.batches)

    def poll_events(self):
        return self.batches.pop(0) if self.batches else []

    def cancel(self):
        self.cancelled = True


def test_run_to_end_folds_every_event_and_idles_between_polls():
    stage = {"event": "stage", "stage": "finetune", "phase": "finetune", "total": 2}
    progress = {"event": "progress", "stage": "finetune", "phase": "finetune", "iteration": 1, "total": 2,
                "overall_iteration": 1, "overall_total": 2, "loss": 0.5, "seconds_per_iteration": 0.1}
    done = {"event": "done", "model": "m.pt", "predictions": [], "exit_code": 0}
    seen, idled = [], []
    outcome = blocking_run.run_to_end(ScriptedWorker([[stage], [progress], [done]]), callback=seen.append,
                                      idle=lambda: idled.append(1))
    assert outcome.events == [stage, progress, done] and seen == outcome.events[:len(seen)]
    assert outcome.returncode == 0 and outcome.log == ["a log line"] and idled
    assert outcome.tracker.seconds_per_iteration == pytest.approx(0.1)


def test_run_to_end_cancels_on_timeout():
    worker = ScriptedWorker([], forever=True)
    with pytest.raises(TimeoutError):
        blocking_run.run_to_end(worker, timeout=0.0)
    assert worker.cancelled
