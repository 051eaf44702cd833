"""The user's labels as they are (issue 34, items 2 and 9), against slicer-core: labelmap volume nodes,
segmentations whose segments are named "1, 2, 3" or "Label_N" (a label file imported without a colour
table), or carry a colour table's names (mapped by label value), make valid labeled cases through the
panel's path (``module_jobs.prepare_training_job``); a case that lacks some classes is accepted with a
warning naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

import slicer.util  # noqa: E402

from ACTIONPlusPlusLib.data.imageio import read_case  # noqa: E402
from ACTIONPlusPlusLib.errors import DataError  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge import module_jobs, node_selection, segmentations  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel.job_options import PanelSettings  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.volumes import case_from_volume_node, volume_node_from_case  # noqa: E402
from test_scene_bridge import SHAPE, cardiac_labels, make_segmentation, make_volume  # noqa: E402


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def _labelmap(scene, volume, labels, name="labels"):
    return volume_node_from_case(scene, case_from_volume_node(volume), name, labelmap=True, array=labels)


def _imported(scene, labelmap, names=None, name="imported"):
    """A segmentation made from a labelmap as Slicer's Data module does; ``names`` gives the labelmap a
    colour table (the segments then carry those names)."""
    if names:
        table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "table")
        table.SetTypeToUser()
        table.SetNumberOfColors(max(names) + 1)
        for value, text in names.items():
            table.SetColor(value, text, 0.2, 0.4, 0.6, 1.0)
        labelmap.CreateDefaultDisplayNodes()
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    return seg


def _settings(root, **changes):
    return PanelSettings(preset="acdc", budget_mode="quick", output_root=str(root), **changes)


def _job_labels(plan):
    files = sorted((plan.job_dir / "dataset" / "labelsTr").iterdir())
    return [read_case(path).image.astype(np.uint8) for path in files]


def test_segments_named_by_their_values_are_valid_labeled_cases(scene, tmp_path):
    volume = make_volume(scene)
    numbered = make_segmentation(scene, volume, cardiac_labels(), {1: "1", 2: "2", 3: "3"}, name="Numbered")
    assert node_selection.node_selection_problems([(volume, numbered)], [], "acdc") == []
    job_path, plan = module_jobs.prepare_training_job(scene, [(volume, numbered)], [], _settings(tmp_path))
    assert np.array_equal(_job_labels(plan)[0], cardiac_labels()) and plan.warnings == []
    assert segmentations.class_mapping_text(numbered, "acdc") == "RV <- '1', Myo <- '2', LV <- '3'"


def test_a_label_file_imported_as_a_segmentation_is_a_valid_labeled_case(scene, tmp_path):
    volume = make_volume(scene)
    imported = _imported(scene, _labelmap(scene, volume, cardiac_labels()))  # segments "Label_1" .. "Label_3"
    assert np.array_equal(segmentations.labeled_case_from_nodes(volume, imported, "acdc").label, cardiac_labels())


def test_colour_table_names_map_by_label_value(scene, tmp_path):
    volume = make_volume(scene)
    labelmap = _labelmap(scene, volume, cardiac_labels())
    named = _imported(scene, labelmap, {0: "background", 1: "tissue", 2: "bone", 3: "skin"}, name="Generic")
    with pytest.raises(DataError, match="Generic.*by label value"):
        segmentations.labeled_case_from_nodes(volume, named, "acdc")
    assert segmentations.class_mapping_text(named, "acdc", "value") == "RV <- 'tissue', Myo <- 'bone', LV <- 'skin'"
    _job, plan = module_jobs.prepare_training_job(scene, [(volume, named)], [], _settings(tmp_path, label_mapping="value"))
    assert np.array_equal(_job_labels(plan)[0], cardiac_labels())


def test_a_labelmap_volume_node_is_a_valid_labeled_case(scene, tmp_path):
    volume = make_volume(scene)
    labelmap = _labelmap(scene, volume, cardiac_labels())
    assert node_selection.node_selection_problems([(volume, labelmap)], [], "acdc") == []
    _job, plan = module_jobs.prepare_training_job(scene, [(volume, labelmap)], [], _settings(tmp_path))
    assert np.array_equal(_job_labels(plan)[0], cardiac_labels())


def test_a_partial_annotation_is_warned_about_per_case(scene, tmp_path):
    full, partial = make_volume(scene, "Full"), make_volume(scene, "Partial", seed=1)
    labels = cardiac_labels()
    pairs = [(full, make_segmentation(scene, full, labels, {1: "RV", 2: "Myo", 3: "LV"})),
             (partial, make_segmentation(scene, partial, np.where(labels == 2, 0, labels), {1: "RV", 3: "LV"}, name="NoMyo"))]
    _job, plan = module_jobs.prepare_training_job(scene, pairs, [], _settings(tmp_path))
    assert len(plan.warnings) == 1
    assert "Partial" in plan.warnings[0] and "NoMyo" in plan.warnings[0] and "no Myo" in plan.warnings[0]
    assert "background" in plan.warnings[0] and "Full" not in plan.warnings[0]
    assert json.loads((plan.job_dir / "nodes.json").read_text())["warnings"] == plan.warnings


def test_an_unknown_mapping_is_refused(scene, tmp_path):
    volume = make_volume(scene)
    seg = make_segmentation(scene, volume, cardiac_labels(), {1: "RV", 2: "Myo", 3: "LV"})
    with pytest.raises(ValueError, match="label mapping"):
        module_jobs.prepare_training_job(scene, [(volume, seg)], [], _settings(tmp_path, label_mapping="order"))
    assert list(tmp_path.iterdir()) == [] and SHAPE == cardiac_labels().shape  # nothing written
