"""The module Logic's work on the scene (slicer_bridge.module_jobs), run under plain Python against
slicer-core: job preparation from picked nodes with its selection and disk-space checks, prediction jobs,
and loading a job's results back as new nodes (issue 14, item 7).  ``ACTIONPlusPlusLogic`` calls the
same functions with ``slicer.mrmlScene``."""

from __future__ import annotations

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

from ACTIONPlusPlusLib.data.imageio import read_case, write_label  # noqa: E402
from ACTIONPlusPlusLib.jobs import read_job  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge import module_jobs  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.node_selection import source_volume  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel import output_folder  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel.job_options import PanelSettings  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.samples import add_phantom_sample  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.segmentations import label_from_node  # noqa: E402


@pytest.fixture
def sample():
    scene = slicer.vtkMRMLScene()
    pairs, unlabeled = add_phantom_sample(scene, "acdc", num_labeled=2, num_unlabeled=2)
    return scene, pairs, unlabeled


def _settings(root, **changes) -> PanelSettings:
    return PanelSettings(preset="acdc", budget_mode="quick", output_root=str(root), **changes)


def _node_state(nodes) -> dict[str, tuple[int, str]]:
    return {node.GetID(): (node.GetMTime(), node.GetName()) for node in nodes}


def test_a_training_job_is_written_from_the_picked_nodes_which_stay_untouched(sample, tmp_path):
    scene, pairs, unlabeled = sample
    nodes = [n for pair in pairs for n in pair] + list(unlabeled)
    before = _node_state(nodes)
    count = scene.GetNumberOfNodes()
    job_path, plan = module_jobs.prepare_training_job(scene, pairs, unlabeled, _settings(tmp_path, seed=7))
    job = read_job(job_path)
    assert job_path == plan.job_dir / "job.json" and plan.job_dir.parent == tmp_path
    assert (job.mode, job.preset, job.seed, job.output_dir) == ("train", "acdc", 7, plan.output_dir)
    assert job.overrides["budget_iterations"] == 600  # the panel's quick ACDC budget
    assert len(list((job.dataset_dir / "imagesTr").iterdir())) == 2
    assert len(list((job.dataset_dir / "labelsTr").iterdir())) == 2
    assert len(list((job.dataset_dir / "imagesUnlabeled").iterdir())) == 2
    assert _node_state(nodes) == before and scene.GetNumberOfNodes() == count


def test_a_bad_selection_or_a_full_disk_writes_nothing(sample, tmp_path, monkeypatch):
    scene, pairs, unlabeled = sample
    volume = pairs[0][0]
    with pytest.raises(ValueError, match="both labeled") as error:
        module_jobs.prepare_training_job(scene, pairs, [volume], _settings(tmp_path))
    assert volume.GetName() in str(error.value)
    with pytest.raises(ValueError, match="relative path"):
        module_jobs.prepare_training_job(scene, pairs, unlabeled, _settings("runs"))
    monkeypatch.setattr(output_folder.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(OSError, match="free") as error:
        module_jobs.prepare_training_job(scene, pairs, unlabeled, _settings(tmp_path))
    assert str(tmp_path) in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_prediction_jobs_need_a_volume_and_an_existing_model(sample, tmp_path):
    scene, _pairs, unlabeled = sample
    settings = _settings(tmp_path)
    with pytest.raises(ValueError, match="volume"):
        module_jobs.prepare_prediction_job(scene, [None], str(tmp_path / "model.pt"), settings)
    with pytest.raises(ValueError, match="model file"):
        module_jobs.prepare_prediction_job(scene, unlabeled, str(tmp_path / "model.pt"), settings)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    job = read_job(module_jobs.prepare_prediction_job(scene, unlabeled[:1], str(model), settings))
    assert (job.mode, job.model, job.resume) == ("predict", model, False)
    assert len(job.predict_files()) == 1 and job.output_dir.parent.name.startswith("predict-")


def test_results_come_back_as_new_nodes_marked_with_their_volume(sample, tmp_path):
    scene, pairs, unlabeled = sample
    job_path, _plan = module_jobs.prepare_training_job(scene, pairs, unlabeled, _settings(tmp_path))
    job = read_job(job_path)
    expected = {}
    for index, path in enumerate(sorted((job.dataset_dir / "imagesUnlabeled").iterdir())):
        case = read_case(path)
        labels = np.zeros(case.image.shape, np.uint8)
        labels[:, 10 + index: 20 + index, 12:22] = 3  # LV
        write_label(job.predictions_dir / path.name, labels, case)
        expected[case.id] = labels
    count = scene.GetNumberOfNodes()
    imports = module_jobs.load_results(scene, job_path.parent)
    assert len(imports) == 2 and all(i.message is None for i in imports)
    assert {i.volume_node.GetID() for i in imports} == {v.GetID() for v in unlabeled}
    assert scene.GetNumberOfNodes() > count
    for result in imports:
        assert result.segmentation_node.GetID() not in {n.GetID() for pair in pairs for n in pair}
        assert source_volume(scene, result.segmentation_node) is result.volume_node
        labels = label_from_node(result.segmentation_node, result.volume_node, "acdc")
        assert np.array_equal(labels, expected[result.case_id])
