"""Models and predictions a user can manage, against slicer-core (issue 34, items 5 and 6): Predict
takes the preset from the model; a volume's prediction is updated in place by the next one (no
"<volume> ACTION++_1" pile-up) unless the user renamed or kept it."""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

from ACTIONPlusPlusLib.data.imageio import read_case, write_label  # noqa: E402
from ACTIONPlusPlusLib.jobs import read_job  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge import module_jobs, node_selection  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel.job_options import PanelSettings  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.samples import add_phantom_sample  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.segmentations import label_from_node  # noqa: E402


@pytest.fixture
def sample():
    scene = slicer.vtkMRMLScene()
    _pairs, unlabeled = add_phantom_sample(scene, "acdc", num_labeled=1, num_unlabeled=1)
    return scene, unlabeled[0]


def _model(folder, preset):
    run = folder / "run-1" / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": preset}))
    (run / "model.pt").write_bytes(b"weights")
    return run / "model.pt"


def test_predict_takes_the_preset_from_the_model(sample, tmp_path):
    scene, volume = sample
    model = _model(tmp_path / "models", "la")
    job = read_job(module_jobs.prepare_prediction_job(scene, [volume], str(model), PanelSettings(preset="acdc", output_root=str(tmp_path))))
    assert job.preset == "la"


def _predict(scene, volume, root, value, model="model.pt"):
    """A finished prediction job of ``volume`` whose result paints ``value`` (LV=3 or RV=1) in a box."""
    settings = PanelSettings(preset="acdc", output_root=str(root))
    (root / model).write_bytes(b"weights")
    job_path = module_jobs.prepare_prediction_job(scene, [volume], str(root / model), settings)
    job = read_job(job_path)
    path = job.predict_files()[0]
    case = read_case(path)
    labels = np.zeros(case.image.shape, np.uint8)
    labels[:, 8:20, 8:20] = value
    write_label(job.predictions_dir / path.name, labels, case)
    imports = module_jobs.load_results(scene, job_path.parent, model=str(root / model))
    assert len(imports) == 1 and imports[0].message is None
    return imports[0], labels


def _predictions(scene, volume):
    collection = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    nodes = [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
    return [n for n in nodes if node_selection.source_volume(scene, n) is volume]


def test_predictions_of_a_volume_update_in_place(sample, tmp_path):
    scene, volume = sample
    first, _ = _predict(scene, volume, tmp_path, 3)
    second, labels = _predict(scene, volume, tmp_path, 1)
    assert second.segmentation_node is first.segmentation_node and second.updated
    assert [n.GetName() for n in _predictions(scene, volume)] == [f"{volume.GetName()} ACTION++"]
    assert np.array_equal(label_from_node(second.segmentation_node, volume, "acdc"), labels)
    assert second.segmentation_node.GetAttribute(node_selection.MODEL_ATTRIBUTE) == str(tmp_path / "model.pt")


def test_a_renamed_or_kept_prediction_is_never_updated(sample, tmp_path):
    scene, volume = sample
    first, first_labels = _predict(scene, volume, tmp_path, 3)
    first.segmentation_node.SetName("my corrected LV")
    second, _ = _predict(scene, volume, tmp_path, 1)
    assert second.segmentation_node is not first.segmentation_node and not second.updated
    assert np.array_equal(label_from_node(first.segmentation_node, volume, "acdc"), first_labels)
    node_selection.keep_prediction(second.segmentation_node)  # "Add as labeled" / "Add labeled case"
    node_selection.keep_prediction(volume)  # not a prediction: left untouched
    assert volume.GetAttribute(node_selection.KEPT_ATTRIBUTE) is None
    third, _ = _predict(scene, volume, tmp_path, 3)
    assert third.segmentation_node not in (first.segmentation_node, second.segmentation_node)
    assert len(_predictions(scene, volume)) == 3
