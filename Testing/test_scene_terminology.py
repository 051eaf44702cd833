"""Terminology strings and segment metadata: Slicer parses ours, and they survive a .seg.nrrd round trip."""

from __future__ import annotations

import numpy as np
import pytest

from ACTIONPlusPlusLib.slicer_bridge import terminology

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")
import slicer.util  # noqa: E402
import vtk  # noqa: E402

from ACTIONPlusPlusLib.slicer_bridge.node_files import load_segmentation_file, load_volume_file, save_node  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.prediction_nodes import add_prediction_to_scene  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.segmentations import label_from_node  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.volumes import case_from_volume_node, volume_node_from_case  # noqa: E402


def test_codes_and_colours_match_spec():
    la, = terminology.classes("la")
    assert (la.value, la.code, la.rgb) == (1, "82471001", (221, 129, 37))
    rv, myo, lv = terminology.classes("acdc")
    assert (rv.value, rv.code, rv.rgb) == (1, "53085002", (61, 126, 220))
    assert (myo.value, myo.code, myo.rgb) == (2, "74281007", (241, 196, 48))
    assert (lv.value, lv.code, lv.rgb) == (3, "87878005", (214, 48, 49))
    assert terminology.CATEGORY == ("SCT", "123037004", "Anatomical Structure")


def test_lv_myo_and_rv_colours_are_told_apart():
    """Three distinct hues, far apart (issue 34): the former three browns were at most ~55 RGB apart and
    within 15 degrees of hue.  Red, yellow and blue: also apart for red-green colour-blind eyes."""
    import colorsys

    infos = terminology.classes("acdc")
    hues = sorted(colorsys.rgb_to_hsv(*info.color)[0] * 360 for info in infos)
    gaps = [b - a for a, b in zip(hues, hues[1:])] + [360 - hues[-1] + hues[0]]
    assert min(gaps) >= 40, hues
    for a in infos:
        for b in infos:
            if a is not b:
                assert sum((x - y) ** 2 for x, y in zip(a.rgb, b.rgb)) ** 0.5 >= 120, (a.name, b.name)


def test_names_and_synonyms():
    f = terminology.class_value_for_segment_name
    assert f("la", "Left Atrium") == 1 and f("la", "LA") == 1 and f("la", "left_atrium") == 1
    assert f("acdc", "LV blood pool") == 3 and f("acdc", "left ventricle") == 3 and f("acdc", "Lv") == 3
    assert f("acdc", "Myocardium") == 2 and f("acdc", "LV myocardium") == 2 and f("acdc", " myo ") == 2
    assert f("acdc", "right-ventricle") == 1 and f("acdc", "RV") == 1
    assert f("acdc", "Segment_1") is None and f("acdc", "LA") is None and f("la", "LV") is None
    assert f("acdc", "") is None
    from ACTIONPlusPlusLib.config import preset

    for name in ("acdc", "la"):  # canonical names are the config's class names, at their index
        cfg = preset(name)
        for info in terminology.classes(name):
            assert cfg.class_names[info.value] == info.name


@pytest.mark.parametrize("preset", ["la", "acdc"])
def test_entry_string_is_what_slicer_serializes(preset):
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for info in terminology.classes(preset):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(info.terminology_entry, entry)
        assert entry.GetTerminologyContextName() == terminology.TERMINOLOGY_CONTEXT
        category, kind = entry.GetCategoryObject(), entry.GetTypeObject()
        assert (category.GetCodingSchemeDesignator(), category.GetCodeValue(), category.GetCodeMeaning()) == terminology.CATEGORY
        assert (kind.GetCodingSchemeDesignator(), kind.GetCodeValue(), kind.GetCodeMeaning()) == ("SCT", info.code, info.meaning)
        assert logic.SerializeTerminologyEntry(entry) == info.terminology_entry
        assert terminology.class_value_for_terminology(preset, info.terminology_entry) == info.value


def _volume(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Heart")
    node.SetSpacing(1.25, 1.25, 8.0)
    node.SetOrigin(-3.0, 4.0, 5.0)
    m = vtk.vtkMatrix4x4()
    m.SetElement(2, 2, -1.0)  # left-handed
    node.SetIJKToRASDirectionMatrix(m)
    slicer.util.updateVolumeFromArray(node, np.arange(5 * 8 * 9, dtype=np.float32).reshape(5, 8, 9))
    return node


def test_segments_survive_seg_nrrd_save_and_reload(tmp_path):
    scene = slicer.vtkMRMLScene()
    volume = _volume(scene)
    labels = np.zeros((5, 8, 9), np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[1:4, 4:7, 4:8] = 3  # no Myo voxel: the Myo segment is empty but present
    pred = add_prediction_to_scene(scene, labels, volume, "acdc")
    path = save_node(pred, tmp_path / "Heart ACTION++.seg.nrrd")

    other = slicer.vtkMRMLScene()
    loaded = load_segmentation_file(other, path)
    segmentation = loaded.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for info in terminology.classes("acdc"):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
        assert segment is not None, info.name
        assert np.allclose(segment.GetColor(), np.array(info.rgb) / 255.0, atol=1e-6)
        assert segment.GetTerminology() == info.terminology_entry
        assert not segment.GetNameAutoGenerated()
    # and the voxels come back on the original grid (volume re-created in the other scene)
    volume2 = volume_node_from_case(other, case_from_volume_node(volume), "Heart")
    assert np.array_equal(label_from_node(loaded, volume2, "acdc"), labels)


def test_storage_errors_are_clear(tmp_path):
    scene = slicer.vtkMRMLScene()
    bad = tmp_path / "broken.nrrd"
    bad.write_text("this is not an image")
    from ACTIONPlusPlusLib.errors import DataError

    with pytest.raises(DataError, match="broken.nrrd"):
        load_volume_file(scene, bad)
    with pytest.raises(DataError, match="not found"):
        load_segmentation_file(scene, tmp_path / "absent.seg.nrrd")
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0  # nothing left behind


# ------------------------------------------------------------------------- our own terminology file

def _term_file():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "ACTIONPlusPlus" / "Resources" / "Terminology" / terminology.TERMINOLOGY_FILE_NAME


def test_terminology_file_is_the_segment_context_of_our_classes():
    import json

    document = json.loads(_term_file().read_text())
    assert document == terminology.terminology_document()  # regenerate the file from terminology.py if not
    assert document["SegmentationCategoryTypeContextName"] == terminology.TERMINOLOGY_CONTEXT
    assert document["@schema"].endswith("segment-context-schema.json#")
    category, = document["SegmentationCodes"]["Category"]
    assert (category["CodingSchemeDesignator"], category["CodeValue"], category["CodeMeaning"]) == terminology.CATEGORY
    for item in category["Type"]:  # the fields Slicer's segment-context schema requires of a type
        assert {"CodingSchemeDesignator", "CodeValue", "CodeMeaning"} <= set(item)
        assert len(item["recommendedDisplayRGBValue"]) == 3
    codes = {item["CodeValue"]: item for item in category["Type"]}
    for preset in ("la", "acdc"):
        for info in terminology.classes(preset):  # every preset segment, with its code, name and colour
            item = codes[info.code]
            assert (item["CodeMeaning"], item["3dSlicerLabel"], tuple(item["recommendedDisplayRGBValue"])) == (
                info.meaning, info.name, info.rgb)


def test_slicer_loads_the_terminology_file_and_finds_every_segment():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    name = logic.LoadTerminologyFromFile(str(_term_file()))
    assert name == terminology.TERMINOLOGY_CONTEXT
    category = slicer.vtkSlicerTerminologyCategory()
    assert logic.GetNumberOfCategoriesInTerminology(name) == 1 and logic.GetNthCategoryInTerminology(name, 0, category)
    found = {}
    kind = slicer.vtkSlicerTerminologyType()
    for index in range(logic.GetNumberOfTypesInTerminologyCategory(name, category)):
        assert logic.GetNthTypeInTerminologyCategory(name, category, index, kind)
        found[kind.GetCodeValue()] = (kind.GetCodeMeaning(), kind.GetSlicerLabel(), tuple(kind.GetRecommendedDisplayRGBValue()))
    for preset in ("la", "acdc"):
        for info in terminology.classes(preset):
            assert found[info.code] == (info.meaning, info.name, info.rgb)
            # a segment's entry resolves against the loaded context
            entry = slicer.vtkSlicerTerminologyEntry()
            assert logic.DeserializeTerminologyEntry(info.terminology_entry, entry)
            assert entry.GetTerminologyContextName() == name and entry.GetTypeObject().GetCodeValue() == info.code


def test_entries_in_the_old_general_anatomy_context_still_match_by_code():
    old = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~"
           "SCT^87878005^Left ventricle of heart~^^~Anatomic codes - DICOM master list~^^~^^")
    assert terminology.class_value_for_terminology("acdc", old) == 3
