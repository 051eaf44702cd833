"""Training jobs written from scene nodes, and predictions loaded back onto the right volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")
import slicer.util  # noqa: E402
import vtk  # noqa: E402

from ACTIONPlusPlusLib.data.imageio import read_case, write_image, write_label  # noqa: E402
from ACTIONPlusPlusLib.errors import DataError  # noqa: E402
from ACTIONPlusPlusLib.jobs import read_job  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.job_folder import write_training_job  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.results import load_predictions  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.samples import add_phantom_sample  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.segmentations import label_from_node  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.volumes import case_from_volume_node, volume_node_from_case  # noqa: E402

SHAPE = (5, 12, 10)


def volume(scene, name, seed, origin=(1.5, -2.0, 30.0)):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(0.9, 1.1, 3.0)
    node.SetOrigin(*origin)
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 0, 0.0), m.SetElement(0, 1, 1.0), m.SetElement(1, 0, 1.0), m.SetElement(1, 1, 0.0)  # det -1
    node.SetIJKToRASDirectionMatrix(m)
    slicer.util.updateVolumeFromArray(node, np.random.default_rng(seed).random(SHAPE, dtype=np.float32) * 500)
    return node


def atrium(shape=SHAPE, shift=0):
    labels = np.zeros(shape, np.uint8)
    labels[1:4, 3 + shift:9 + shift, 2:7] = 1
    return labels


def segmentation(scene, vol, labels, name):
    case = case_from_volume_node(vol)
    lm = volume_node_from_case(scene, case, name + "-lm", labelmap=True, array=labels)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg)
    seg.GetSegmentation().GetNthSegment(0).SetName("Left atrium")
    scene.RemoveNode(lm)
    return seg


@pytest.fixture()
def populated():
    scene = slicer.vtkMRMLScene()
    a, b = volume(scene, "Case A", 1), volume(scene, "Case B", 2)
    u1, u2 = volume(scene, "Unlabeled 1", 3), volume(scene, "Case A", 4)  # duplicate node name on purpose
    p = volume(scene, "To predict", 5)
    seg_a, seg_b = segmentation(scene, a, atrium(), "Seg A"), segmentation(scene, b, atrium(shift=2), "Seg B")
    return scene, dict(a=a, b=b, u1=u1, u2=u2, p=p, seg_a=seg_a, seg_b=seg_b)


def test_job_layout_geometry_and_mapping(populated, tmp_path):
    scene, n = populated
    job_path = write_training_job(
        scene, [(n["a"], n["seg_a"]), (n["b"], n["seg_b"])], [n["u1"], n["u2"]], [n["p"]], tmp_path / "job", "la",
        overrides={"finetune_iterations": 7}, device="cpu", seed=5, write_confidence=True,
    )
    job = read_job(job_path)
    assert job.mode == "train" and job.preset == "la" and job.device == "cpu" and job.seed == 5
    assert job.overrides == {"finetune_iterations": 7} and job.write_confidence
    assert job.output_dir == tmp_path / "job" / "run"
    ds = job.dataset_dir
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == ["Case_A.nrrd", "Case_B.nrrd"]
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == ["Case_A.nrrd", "Case_B.nrrd"]
    assert sorted(p.name for p in (ds / "imagesUnlabeled").iterdir()) == ["Case_A_2.nrrd", "Unlabeled_1.nrrd"]
    assert [p.name for p in job.predict_files()] == ["To_predict.nrrd"]

    # the files hold the nodes' voxels with the nodes' geometry (SimpleITK reading, as the worker does)
    ref = case_from_volume_node(n["a"])
    case = read_case(ds / "imagesTr" / "Case_A.nrrd", label_path=ds / "labelsTr" / "Case_A.nrrd")
    assert np.array_equal(case.image, ref.image)
    assert np.array_equal(case.label, atrium())
    assert np.allclose(case.spacing, ref.spacing, atol=1e-12) and np.allclose(case.origin, ref.origin, atol=1e-12)
    assert np.allclose(case.direction, ref.direction, atol=1e-12)

    mapping = json.loads((tmp_path / "job" / "nodes.json").read_text())
    roles = {(e["role"], e["volume_node_id"]) for e in mapping["entries"]}
    assert ("unlabeled", n["u2"].GetID()) in roles and ("predict", n["p"].GetID()) in roles
    assert mapping["preset"] == "la"


def _fake_predictions(job_path, cases_by_id, confidence=True):
    """What the worker writes: label maps with the input geometry under <output>/predictions."""
    job = read_job(job_path)
    events = []
    for case_id, (case, labels) in cases_by_id.items():
        out = job.predictions_dir / f"{case_id}.nrrd"
        write_label(out, labels, case)
        event = {"event": "prediction", "input": str(case.path), "output": str(out), "case": case_id}
        if confidence:
            conf = job.predictions_dir / f"{case_id}_confidence.nrrd"
            write_image(conf, np.full(labels.shape, 0.75, np.float32), case)
            event["confidence"] = str(conf)
        events.append(event)
    return events


@pytest.mark.parametrize("use_events", [True, False])
def test_predictions_come_back_on_the_right_volume(populated, tmp_path, use_events):
    scene, n = populated
    job_path = write_training_job(
        scene, [(n["a"], n["seg_a"])], [n["u1"], n["u2"]], [n["p"]], tmp_path / "job", "la"
    )
    job = read_job(job_path)
    ds = job.dataset_dir
    files = {
        "Unlabeled_1": ds / "imagesUnlabeled" / "Unlabeled_1.nrrd",
        "Case_A_2": ds / "imagesUnlabeled" / "Case_A_2.nrrd",
        "To_predict": job.predict_files()[0],
    }
    cases = {}
    for k, (case_id, path) in enumerate(files.items()):
        case = read_case(path)
        cases[case_id] = (case, atrium(shift=k))
    events = _fake_predictions(job_path, cases)
    results = load_predictions(scene, tmp_path / "job", events if use_events else None)
    assert len(results) == 3 and all(r.message is None for r in results)
    by_volume = {r.volume_node.GetID(): r for r in results}
    for key, case_id in (("u1", "Unlabeled_1"), ("u2", "Case_A_2"), ("p", "To_predict")):
        result = by_volume[n[key].GetID()]
        assert result.segmentation_node.GetName().startswith("Case A ACTION++" if key == "u2" else n[key].GetName())
        labels = label_from_node(result.segmentation_node, n[key], "la")
        assert np.array_equal(labels, cases[case_id][1])
        assert result.confidence_node is not None
        assert np.allclose(slicer.util.arrayFromVolume(result.confidence_node), 0.75)


def test_prediction_for_removed_volume_is_skipped(populated, tmp_path):
    scene, n = populated
    job_path = write_training_job(scene, [(n["a"], n["seg_a"])], [n["u1"]], [], tmp_path / "job", "la")
    case = read_case(read_job(job_path).dataset_dir / "imagesUnlabeled" / "Unlabeled_1.nrrd")
    events = _fake_predictions(job_path, {"Unlabeled_1": (case, atrium())}, confidence=False)
    scene.RemoveNode(n["u1"])
    results = load_predictions(scene, tmp_path / "job", events)
    assert results[0].segmentation_node is None and "no longer in the scene" in results[0].message


def test_job_validation_errors(populated, tmp_path):
    scene, n = populated
    pair = (n["a"], n["seg_a"])
    with pytest.raises(DataError, match="'Case A'.*both labeled and unlabeled"):
        write_training_job(scene, [pair], [n["a"]], [], tmp_path / "j1", "la")
    with pytest.raises(DataError, match="no labeled case"):
        write_training_job(scene, [], [n["u1"]], [], tmp_path / "j2", "la")
    with pytest.raises(DataError, match="listed twice"):
        write_training_job(scene, [pair, pair], [], [], tmp_path / "j3", "la")
    far = volume(scene, "Far", 9, origin=(900.0, 900.0, 900.0))
    with pytest.raises(DataError, match="'Seg A'.*'Far'.*do not overlap"):
        write_training_job(scene, [(far, n["seg_a"])], [], [], tmp_path / "j4", "la")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="not writable"):
        write_training_job(scene, [pair], [], [], blocker / "job", "la")
    with pytest.raises(DataError, match="overrides"):
        write_training_job(scene, [pair], [], [], tmp_path / "j5", "la", overrides={"no_such_key": 1})
    with pytest.raises(DataError, match="none of the ACDC"):
        write_training_job(scene, [pair], [], [], tmp_path / "j6", "acdc")
    # nothing was written for the failing node checks
    assert not (tmp_path / "j1" / "job.json").exists() and not (tmp_path / "j4" / "dataset").exists()


def test_rewriting_a_job_removes_stale_files(populated, tmp_path):
    scene, n = populated
    write_training_job(scene, [(n["a"], n["seg_a"])], [n["u1"], n["u2"]], [], tmp_path / "job", "la")
    job_path = write_training_job(scene, [(n["a"], n["seg_a"])], [n["u1"]], [], tmp_path / "job", "la")
    ds = read_job(job_path).dataset_dir
    assert [p.name for p in (ds / "imagesUnlabeled").iterdir()] == ["Unlabeled_1.nrrd"]


def test_predict_only_job(populated, tmp_path):
    scene, n = populated
    model = tmp_path / "model.pt"
    model.write_bytes(b"placeholder")  # read_job only checks that it exists
    job_path = write_training_job(scene, [], [n["u1"]], [n["p"]], tmp_path / "job", "la", mode="predict", model=model)
    job = read_job(job_path)
    assert job.mode == "predict" and job.dataset_dir is None and job.model == model
    assert sorted(p.name for p in job.predict_files()) == ["To_predict.nrrd", "Unlabeled_1.nrrd"]


def test_volume_both_unlabeled_and_predicted_is_written_once(populated, tmp_path):
    scene, n = populated
    job_path = write_training_job(scene, [(n["a"], n["seg_a"])], [n["u1"]], [n["u1"], n["p"], n["p"]],
                                  tmp_path / "job", "la")
    job = read_job(job_path)
    assert [p.name for p in job.predict_files()] == ["To_predict.nrrd"] and job.predict_unlabeled
    job_path = write_training_job(scene, [(n["a"], n["seg_a"])], [n["u1"]], [n["u1"]], tmp_path / "job2", "la",
                                  predict_unlabeled=False)
    job = read_job(job_path)
    assert [p.name for p in job.predict_files()] == ["Unlabeled_1_2.nrrd"] and not job.predict_unlabeled


def test_volume_renamed_during_training_keeps_its_prediction(populated, tmp_path):
    scene, n = populated
    job_path = write_training_job(scene, [(n["a"], n["seg_a"])], [n["u1"]], [], tmp_path / "job", "la")
    case = read_case(read_job(job_path).dataset_dir / "imagesUnlabeled" / "Unlabeled_1.nrrd")
    events = _fake_predictions(job_path, {"Unlabeled_1": (case, atrium())}, confidence=False)
    n["u1"].SetName("Renamed while training")
    decoy = volume(scene, "Unlabeled 1", 9)  # a new node that took the old name: not the source
    for use_events in (events, None):
        result, = load_predictions(scene, tmp_path / "job", use_events)
        assert result.message is None and result.volume_node is n["u1"] and result.volume_node is not decoy
        assert result.segmentation_node.GetName().startswith("Renamed while training ACTION++")


def test_writing_a_job_reports_progress_per_volume(populated, tmp_path):
    scene, n = populated
    calls = []
    write_training_job(scene, [(n["a"], n["seg_a"]), (n["b"], n["seg_b"])], [n["u1"]], [n["p"]],
                       tmp_path / "job", "la", progress=lambda done, total, name: calls.append((done, total, name)))
    assert calls == [(0, 4, "Case A"), (1, 4, "Case B"), (2, 4, "Unlabeled 1"), (3, 4, "To predict"), (4, 4, "")]


@pytest.mark.parametrize("preset,classes", [("acdc", {1, 2, 3}), ("la", {1})])
def test_phantom_sample_data_is_a_ready_training_set(preset, classes, tmp_path):
    scene = slicer.vtkMRMLScene()
    pairs, unlabeled = add_phantom_sample(scene, preset, num_labeled=2, num_unlabeled=1, seed=1)
    assert len(pairs) == 2 and len(unlabeled) == 1
    names = [v.GetName() for v, _s in pairs] + [v.GetName() for v in unlabeled]
    assert names == [f"ACTION++ {preset.upper()} phantom {i}" for i in (1, 2, 3)]
    for volume_node, segmentation_node in pairs:
        labels = label_from_node(segmentation_node, volume_node, preset)
        assert set(np.unique(labels)) - {0} == classes  # every class present, by name
    # the sample is directly a valid training job
    job_path = write_training_job(scene, pairs, unlabeled, [], tmp_path / "job", preset)
    assert read_job(job_path).dataset_dir.is_dir()
