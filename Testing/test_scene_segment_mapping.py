"""The user's per-segment correction of the mapping (issue 34, "a visible mapping the user can correct"),
against slicer-core: segments whose names say nothing ("tissue", "bone", "fat") become the classes the
user picked, a segment that would match by name can be left out, the choice is kept on the node per
preset (saved with the scene; the segments themselves untouched), and the panel's checks, its mapping
text and the job all follow it."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

from ACTIONPlusPlusLib.data.imageio import read_case  # noqa: E402
from ACTIONPlusPlusLib.errors import DataError  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge import module_jobs, node_selection, segment_classes, segmentations  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel.job_options import PanelSettings  # noqa: E402
from test_scene_bridge import cardiac_labels, make_segmentation, make_volume  # noqa: E402

RV, MYO, LV = 1, 2, 3


@pytest.fixture()
def case():
    scene = slicer.vtkMRMLScene()
    volume = make_volume(scene)
    labels = cardiac_labels()
    seg = make_segmentation(scene, volume, labels, {RV: "tissue", MYO: "bone", LV: "fat"}, name="Atlas")
    return scene, volume, seg, labels


def _ids(seg):
    segmentation = seg.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())}


def test_segments_the_user_maps_by_hand_make_a_valid_labeled_case(case, tmp_path):
    scene, volume, seg, labels = case
    assert node_selection.node_selection_problems([(volume, seg)], [], "acdc")  # no name matches: refused
    ids = _ids(seg)
    rows = segment_classes.segment_mapping_rows(seg, "acdc")
    assert [(name, automatic, chosen) for _id, name, automatic, chosen in rows] == [
        ("tissue", None, None), ("bone", None, None), ("fat", None, None)]
    data_before = {sid: seg.GetSegmentation().GetSegment(sid).GetName() for sid in ids.values()}
    for name, value in (("tissue", RV), ("bone", MYO), ("fat", LV)):
        segment_classes.set_segment_class(seg, "acdc", ids[name], value)
    assert node_selection.node_selection_problems([(volume, seg)], [], "acdc") == []
    problem, text = node_selection.label_summary(seg, "acdc")
    assert problem is None and text == "RV <- 'tissue' (your choice), Myo <- 'bone' (your choice), LV <- 'fat' (your choice)"
    job, plan = module_jobs.prepare_training_job(scene, [(volume, seg)], [], PanelSettings(preset="acdc", output_root=str(tmp_path)))
    written = read_case(next((plan.job_dir / "dataset" / "labelsTr").iterdir())).image.astype(np.uint8)
    np.testing.assert_array_equal(written, labels)
    assert {sid: seg.GetSegmentation().GetSegment(sid).GetName() for sid in ids.values()} == data_before  # segments untouched
    assert json.loads(seg.GetAttribute(segment_classes.SEGMENT_CLASSES_ATTRIBUTE)) == {
        "acdc": {ids["tissue"]: RV, ids["bone"]: MYO, ids["fat"]: LV}}


def test_a_segment_can_be_left_out_or_set_back_to_automatic(case):
    scene, volume, _seg, labels = case
    named = make_segmentation(scene, volume, labels, {RV: "RV", MYO: "Myo", LV: "LV"}, name="Named")
    ids = _ids(named)
    segment_classes.set_segment_class(named, "acdc", ids["Myo"], segment_classes.NOT_USED)
    exported = segmentations.label_from_node(named, volume, "acdc")
    np.testing.assert_array_equal(exported, np.where(labels == MYO, 0, labels))  # Myo left out: background
    assert "Myo" not in node_selection.label_summary(named, "acdc")[1]
    segment_classes.set_segment_class(named, "acdc", ids["Myo"], None)
    np.testing.assert_array_equal(segmentations.label_from_node(named, volume, "acdc"), labels)
    assert named.GetAttribute(segment_classes.SEGMENT_CLASSES_ATTRIBUTE) is None  # nothing left of the choice


def test_the_choice_is_per_preset_wins_over_value_mapping_and_two_for_one_class_is_refused(case):
    _scene, volume, seg, labels = case
    ids = _ids(seg)
    segment_classes.set_segment_class(seg, "la", ids["fat"], 1)  # the LA preset's own choice
    assert segment_classes.segment_corrections(seg, "acdc") == {} and segment_classes.segment_corrections(seg, "la") == {ids["fat"]: 1}
    # each segment has its own layer at label value 1 (RV by value): the user's choices win over that
    assert [automatic for _i, _n, automatic, _c in segment_classes.segment_mapping_rows(seg, "acdc", "value")] == [RV] * 3
    segment_classes.set_segment_class(seg, "acdc", ids["tissue"], LV)
    segment_classes.set_segment_class(seg, "acdc", ids["fat"], segment_classes.NOT_USED)
    exported = segmentations.label_from_node(seg, volume, "acdc", mapping="value")
    np.testing.assert_array_equal(exported, np.select([labels == RV, labels == MYO], [LV, RV], 0))  # bone: by value
    segment_classes.set_segment_class(seg, "acdc", ids["bone"], LV)
    with pytest.raises(DataError, match="both stand for LV"):
        segmentations.label_from_node(seg, volume, "acdc", mapping="value")
    with pytest.raises(ValueError, match="not a class"):
        segment_classes.set_segment_class(seg, "acdc", ids["bone"], 7)
    assert segment_classes.segment_corrections(seg, "la") == {ids["fat"]: 1}
    assert [label for label, _value in segment_classes.mapping_choices("acdc")] == ["automatic", "not used", "RV", "Myo", "LV"]
