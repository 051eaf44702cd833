"""Scene bridge against Slicer's real MRML libraries (slicer-core): geometry, names, colours, terminology."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")
import vtk  # noqa: E402
import slicer.util  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from ACTIONPlusPlusLib.errors import DataError  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge import terminology  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.job_folder import write_training_job  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.prediction_nodes import (  # noqa: E402
    add_prediction_to_scene,
    confidence_node_of,
    labelmap_oriented_image,
)
from ACTIONPlusPlusLib.slicer_bridge.segmentations import (  # noqa: E402
    label_from_node,
    labeled_case_from_nodes,
    preset_color_table,
)
from ACTIONPlusPlusLib.slicer_bridge.volumes import case_from_volume_node, volume_node_from_case  # noqa: E402

# a rotated, LEFT-HANDED frame (det = -1) with anisotropic spacing and a non-zero origin
_C, _S = np.cos(0.3), np.sin(0.3)
DIRECTIONS_RAS = np.array([[_C, -_S, 0.0], [_S, _C, 0.0], [0.0, 0.0, -1.0]])
SPACING = (0.7, 1.3, 2.5)
ORIGIN_RAS = (12.5, -40.25, 7.0)
SHAPE = (6, 10, 12)  # (z, y, x)


def make_volume(scene, name="MRI", shape=SHAPE, directions=DIRECTIONS_RAS, spacing=SPACING, origin=ORIGIN_RAS, seed=0):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*spacing)
    node.SetOrigin(*origin)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(directions[r, c]))
    node.SetIJKToRASDirectionMatrix(matrix)
    array = np.random.default_rng(seed).normal(100, 20, size=shape).astype(np.float32)
    slicer.util.updateVolumeFromArray(node, array)
    return node


def cardiac_labels(shape=SHAPE):
    labels = np.zeros(shape, np.uint8)
    labels[1:5, 1:4, 1:4] = 1  # RV
    labels[1:5, 4:9, 5:11] = 2  # Myo ring
    labels[1:5, 5:8, 6:10] = 3  # LV inside
    return labels


def make_segmentation(scene, volume, labels, names: dict[int, str], order=None, name="Segmentation"):
    """A user-style segmentation: one segment per value, each in its own layer, in ``order``."""
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation = seg.GetSegmentation()
    rep = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    for value in order or sorted(names):
        image = labelmap_oriented_image((labels == value).astype(np.uint8), volume)
        segment = slicer.vtkSegment()
        segment.SetName(names[value])
        segment.AddRepresentation(rep, image)
        segmentation.AddSegment(segment)
    return seg


def geometry_of(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def test_case_geometry_is_exact_lps(scene):
    volume = make_volume(scene)
    case = case_from_volume_node(volume)
    assert case.image.shape == SHAPE and case.image.dtype == np.float32
    assert np.array_equal(case.image, slicer.util.arrayFromVolume(volume))
    assert case.spacing == SPACING
    assert case.origin == (-ORIGIN_RAS[0], -ORIGIN_RAS[1], ORIGIN_RAS[2])
    expected = (np.diag([-1.0, -1.0, 1.0]) @ DIRECTIONS_RAS).ravel()
    assert np.array_equal(np.asarray(case.direction), expected)
    assert np.linalg.det(np.asarray(case.direction).reshape(3, 3)) < 0  # still left-handed
    # SimpleITK agrees voxel by voxel: the LPS point of voxel (i, j, k) is the RAS point with x, y negated
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(case.image)
    image.SetSpacing(case.spacing), image.SetOrigin(case.origin), image.SetDirection(case.direction)
    ijk = (3, 7, 2)
    lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
    ras = geometry_of(volume) @ np.array([*ijk, 1.0])
    assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-12)
    # and back to a node: bit-exact
    back = volume_node_from_case(scene, case, "back")
    assert np.array_equal(geometry_of(back), geometry_of(volume))
    assert np.array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(volume))


def test_round_trip_segmentation_exact(scene):
    volume = make_volume(scene)
    labels = cardiac_labels()
    seg = make_segmentation(scene, volume, labels, {1: "RV", 2: "Myo", 3: "LV"})
    case = labeled_case_from_nodes(volume, seg, "acdc")
    assert case.label.dtype == np.uint8
    assert np.array_equal(case.label, labels)
    pred = add_prediction_to_scene(scene, case.label, volume, "acdc")
    assert pred.GetName() == "MRI ACTION++"
    assert np.array_equal(label_from_node(pred, volume, "acdc"), labels)
    segmentation = pred.GetSegmentation()
    assert segmentation.GetNumberOfLayers() == 1
    assert [segmentation.GetNthSegment(i).GetName() for i in range(3)] == ["RV", "Myo", "LV"]
    # exported labelmap of the prediction sits exactly on the volume grid
    scratch = slicer.vtkMRMLScene()
    out = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        pred, ["RV", "Myo", "LV"], out, volume, 0, preset_color_table(scratch, "acdc")
    )
    assert np.array_equal(geometry_of(out), geometry_of(volume))


def test_missing_class_does_not_shift_others_and_order_is_irrelevant(scene):
    volume = make_volume(scene)
    labels = cardiac_labels()
    labels[labels == 2] = 0  # no myocardium at all
    seg = make_segmentation(scene, volume, labels, {3: "left ventricle", 1: "Right_Ventricle"}, order=[3, 1])
    out = label_from_node(seg, volume, "acdc")
    assert set(np.unique(out)) == {0, 1, 3}
    assert np.array_equal(out, labels)


@pytest.mark.parametrize(
    "names",
    [
        {1: "rv", 2: "MYOCARDIUM", 3: "LV blood pool"},
        {1: "Right ventricle", 2: "LV myocardium", 3: "lv"},
        {1: "RV cavity", 2: "myo", 3: "Left Ventricle"},
    ],
)
def test_synonyms_case_insensitive_any_order(scene, names):
    volume = make_volume(scene)
    labels = cardiac_labels()
    seg = make_segmentation(scene, volume, labels, names, order=[2, 3, 1])
    assert np.array_equal(label_from_node(seg, volume, "acdc"), labels)


def test_extra_segments_ignored_and_terminology_code_matches(scene):
    volume = make_volume(scene)
    labels = cardiac_labels()
    labels[labels == 2] = 0
    seg = make_segmentation(scene, volume, labels, {1: "Aorta", 3: "Segment_3"})
    segmentation = seg.GetSegmentation()
    # "Segment_3" carries the LV SNOMED code in its terminology; "Aorta" matches no class
    lv_id = segmentation.GetSegmentIdBySegmentName("Segment_3")
    segmentation.GetSegment(lv_id).SetTerminology(terminology.class_info("acdc", 3).terminology_entry)
    out = label_from_node(seg, volume, "acdc")
    assert np.array_equal(out, np.where(labels == 3, 3, 0))


def test_two_segments_for_one_class_is_an_error(scene):
    volume = make_volume(scene)
    labels = cardiac_labels()
    seg = make_segmentation(scene, volume, labels, {1: "LV", 3: "left ventricle"}, name="Doubled")
    with pytest.raises(DataError, match="Doubled.*both stand for LV"):
        label_from_node(seg, volume, "acdc")


def test_no_class_error_names_node(scene):
    volume = make_volume(scene)
    seg = make_segmentation(scene, volume, cardiac_labels(), {1: "Liver", 3: "Spleen"}, name="Abdomen")
    with pytest.raises(DataError, match="Abdomen.*none of the ACDC"):
        label_from_node(seg, volume, "acdc")
    with pytest.raises(DataError, match="Abdomen.*none of the LA"):
        label_from_node(seg, volume, "la")
    # a labelmap with only background
    lm = volume_node_from_case(scene, case_from_volume_node(volume), "Empty", labelmap=True,
                               array=np.zeros(SHAPE, np.uint8))
    with pytest.raises(DataError, match="Empty.*none of the ACDC"):
        label_from_node(lm, volume, "acdc")


def test_empty_class_segments_are_an_error_naming_node(scene):
    volume = make_volume(scene)
    seg = make_segmentation(scene, volume, np.zeros(SHAPE, np.uint8), {1: "RV", 3: "LV"}, name="Blank")
    with pytest.raises(DataError, match="Blank.*no labeled voxel"):
        label_from_node(seg, volume, "acdc")


def test_labelmap_values_checked_and_taken_as_is(scene):
    volume = make_volume(scene)
    labels = cardiac_labels()
    case = case_from_volume_node(volume)
    lm = volume_node_from_case(scene, case, "lab", labelmap=True, array=labels)
    assert np.array_equal(label_from_node(lm, volume, "acdc"), labels)
    bad = volume_node_from_case(scene, case, "BadValues", labelmap=True, array=labels * 2)
    with pytest.raises(DataError, match=r"BadValues.*\[4, 6\]"):
        label_from_node(bad, volume, "acdc")
    with pytest.raises(DataError, match=r"BadValues.*LA"):
        label_from_node(bad, volume, "la")


def test_segmentation_on_other_grid_is_resampled(scene):
    volume = make_volume(scene, directions=np.eye(3), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), shape=(4, 8, 8))
    fine = make_volume(scene, "fine", directions=np.eye(3), spacing=(0.5, 0.5, 1.0), origin=(-0.25, -0.25, -0.5),
                       shape=(8, 16, 16))
    fine_labels = np.zeros((8, 16, 16), np.uint8)
    fine_labels[2:6, 4:12, 4:12] = 1  # covers coarse voxels z 1..2, y/x 2..5 exactly
    seg = make_segmentation(scene, fine, fine_labels, {1: "Left atrium"})
    out = label_from_node(seg, volume, "la")
    expected = np.zeros((4, 8, 8), np.uint8)
    expected[1:3, 2:6, 2:6] = 1
    assert out.shape == (4, 8, 8)
    assert np.array_equal(out, expected)
    # and a labelmap on the fine grid is resampled the same way
    lm = volume_node_from_case(scene, case_from_volume_node(fine), "finelab", labelmap=True, array=fine_labels)
    assert np.array_equal(label_from_node(lm, volume, "la"), expected)


def test_bad_volumes_named(scene):
    flat = make_volume(scene, "OneSlice", shape=(1, 10, 12))
    with pytest.raises(DataError, match="OneSlice.*2D"):
        case_from_volume_node(flat)
    assert case_from_volume_node(flat, allow_single_slice=True).image.shape == (1, 10, 12)
    vec = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Colour")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_FLOAT, 3)
    vec.SetAndObserveImageData(image)
    with pytest.raises(DataError, match="Colour"):
        case_from_volume_node(vec)
    multi = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "FourD")
    image4 = vtk.vtkImageData()
    image4.SetDimensions(4, 4, 4)
    image4.AllocateScalars(vtk.VTK_FLOAT, 5)
    multi.SetAndObserveImageData(image4)
    with pytest.raises(DataError, match="FourD.*5 components"):
        case_from_volume_node(multi)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "NoData")
    with pytest.raises(DataError, match="NoData.*no image data"):
        case_from_volume_node(empty)


def test_disjoint_pair_named(scene):
    volume = make_volume(scene, "Patient1")
    far = make_volume(scene, "Elsewhere", origin=(500.0, 500.0, 500.0))
    seg = make_segmentation(scene, far, cardiac_labels(), {1: "RV", 2: "Myo", 3: "LV"}, name="SegOfOther")
    with pytest.raises(DataError, match="SegOfOther.*Patient1.*do not overlap"):
        labeled_case_from_nodes(volume, seg, "acdc")


def test_transform_mismatch_refused(scene):
    volume = make_volume(scene)
    seg = make_segmentation(scene, volume, cardiac_labels(), {1: "RV", 2: "Myo", 3: "LV"}, name="Moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "T")
    seg.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(DataError, match="Moved.*transforms"):
        label_from_node(seg, volume, "acdc")


def _snapshot(scene):
    """(ID, MTime, content digest) of every node, to prove an operation changed nothing."""
    out = {}
    for i in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(i)
        digest = None
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
            digest = slicer.util.arrayFromVolume(node).tobytes()
        if node.IsA("vtkMRMLSegmentationNode"):
            s = node.GetSegmentation()
            digest = []
            for k in range(s.GetNumberOfSegments()):
                segment = s.GetNthSegment(k)
                layer = segment.GetRepresentation("Binary labelmap")
                voxels = numpy_support.vtk_to_numpy(layer.GetPointData().GetScalars()).tobytes() if layer else None
                digest.append((s.GetNthSegmentID(k), segment.GetName(), segment.GetColor(), segment.GetLabelValue(),
                               segment.GetTerminology(), layer.GetExtent() if layer else None, voxels))
            digest = tuple(digest)
        out[node.GetID()] = (node.GetMTime(), digest)
    return out


def test_existing_nodes_unchanged(scene, tmp_path):
    volume = make_volume(scene)
    other = make_volume(scene, "Other", seed=3)
    seg = make_segmentation(scene, volume, cardiac_labels(), {1: "rv", 2: "myo", 3: "lv"}, order=[3, 1, 2])
    shared = add_prediction_to_scene(scene, cardiac_labels(), other, "acdc")  # one shared layer
    shared.GetSegmentation().GetNthSegment(0).SetName("right ventricle")
    lm = volume_node_from_case(scene, case_from_volume_node(other), "lm", labelmap=True,
                               array=cardiac_labels())
    before = _snapshot(scene)
    labels = label_from_node(seg, volume, "acdc")
    assert np.array_equal(label_from_node(shared, other, "acdc"), cardiac_labels())
    assert np.array_equal(label_from_node(shared, volume, "acdc"), cardiac_labels())
    assert np.array_equal(label_from_node(lm, volume, "acdc"), cardiac_labels())
    labeled_case_from_nodes(volume, seg, "acdc")
    write_training_job(scene, [(volume, seg), (other, shared)], [], [], tmp_path / "job", "acdc")
    pred = add_prediction_to_scene(scene, labels, volume, "acdc", confidence=np.ones(SHAPE, np.float32))
    pred2 = add_prediction_to_scene(scene, labels, volume, "acdc")
    after = _snapshot(scene)
    for node_id, state in before.items():
        assert after[node_id] == state, f"{node_id} changed"
    assert pred.GetID() not in before and pred2.GetName() != pred.GetName()
    assert pred2.GetName().startswith("MRI ACTION++")
    conf = confidence_node_of(pred)
    assert conf is not None and conf.GetName() == "MRI ACTION++ confidence"
    assert np.array_equal(geometry_of(conf), geometry_of(volume))


def test_prediction_segments_all_classes_colours_terminology(scene):
    volume = make_volume(scene)
    labels = cardiac_labels()
    labels[labels == 1] = 0  # no RV predicted: the RV segment still exists, empty
    pred = add_prediction_to_scene(scene, labels, volume, "acdc")
    segmentation = pred.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for info in terminology.classes("acdc"):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
        assert segment.GetLabelValue() == info.value
        assert np.allclose(segment.GetColor(), np.array(info.rgb) / 255)
        assert not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated()
        assert f"SCT^{info.code}^" in segment.GetTerminology()
    with pytest.raises(DataError, match="shape"):
        add_prediction_to_scene(scene, labels[:-1], volume, "acdc")
    with pytest.raises(DataError, match=r"\[2, 3\]"):
        add_prediction_to_scene(scene, labels, volume, "la")


def test_shared_layer_subset_keeps_values(scene):
    """A segmentation with one shared layer (as predictions are) where one segment matches no class."""
    volume = make_volume(scene)
    labels = cardiac_labels()
    pred = add_prediction_to_scene(scene, labels, volume, "acdc")
    segmentation = pred.GetSegmentation()
    myo = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("Myo"))
    myo.SetName("Aorta")  # its terminology still says myocardium: still class 2
    assert np.array_equal(label_from_node(pred, volume, "acdc"), labels)
    myo.SetTerminology(terminology.terminology_entry("15825003", "Aorta"))  # now it matches nothing
    out = label_from_node(pred, volume, "acdc")
    assert np.array_equal(out, np.where(labels == 2, 0, labels))


def test_empty_segmentation_in_pair_says_empty(scene):
    volume = make_volume(scene)
    seg = make_segmentation(scene, volume, np.zeros(SHAPE, np.uint8), {3: "LV"}, name="Nothing")
    with pytest.raises(DataError, match="Nothing.*no labeled voxel"):
        labeled_case_from_nodes(volume, seg, "acdc")
