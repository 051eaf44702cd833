"""A GUI that never freezes and Predict on many volumes, against slicer-core (issue 34): the job's volumes
are written one per step and the results loaded one node per step (the panel runs a step per timer
tick: ``panel.sliced_task``); a cancel part-way leaves no job behind; one predict job segments every
ticked volume, with the model's preset, through the stub worker the self-test uses without torch."""

from __future__ import annotations

import json
import weakref

import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")

from ACTIONPlusPlusLib.jobs import read_job  # noqa: E402
from ACTIONPlusPlusLib.errors import DataError  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge import blocking_run, job_folder, module_jobs, node_selection  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel import run_gate, sliced_task  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.panel.job_options import PanelSettings  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.samples import add_phantom_sample  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.stub_worker import StubWorker  # noqa: E402


@pytest.fixture
def sample():
    scene = slicer.vtkMRMLScene()
    pairs, unlabeled = add_phantom_sample(scene, "acdc", num_labeled=2, num_unlabeled=3)
    return scene, pairs, unlabeled


def _images(root):
    return sorted(p.name for p in root.rglob("*.nrrd"))


def test_the_training_job_is_written_one_volume_per_step(sample, tmp_path):
    scene, pairs, unlabeled = sample
    plan, steps = module_jobs.training_job_steps(scene, pairs, unlabeled, PanelSettings(preset="acdc", output_root=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []  # the checks ran; nothing is written before the first step
    written = []
    for done, total, _name in steps:
        assert total == 5 and not (plan.job_dir / "job.json").exists()
        written.append(len(_images(plan.job_dir)))
    assert written == [0, 2, 4, 5, 6, 7]  # image + label per labeled case, one image per unlabeled volume
    assert read_job(plan.job_dir / "job.json").mode == "train"


def test_one_case_in_memory_at_a_time_and_the_job_folder_untouched_until_all_are_written(sample, tmp_path, monkeypatch):
    scene, pairs, unlabeled = sample
    alive = []
    for name in ("case_from_volume_node", "labeled_case_from_nodes"):
        def tracked(*args, _build=getattr(job_folder, name), **kwargs):
            case = _build(*args, **kwargs)
            alive.append(weakref.ref(case))
            return case

        monkeypatch.setattr(job_folder, name, tracked)
    plan, steps = module_jobs.training_job_steps(scene, pairs, unlabeled, PanelSettings(preset="acdc", output_root=str(tmp_path)))
    in_memory = []
    for _progress in steps:
        in_memory.append(sum(ref() is not None for ref in alive))
        assert not (plan.job_dir / "dataset").exists()  # staged until every volume is written
    assert max(in_memory) <= 1 and len(alive) == 5  # every case built, never two held at once
    assert len(list((plan.job_dir / "dataset" / "imagesTr").iterdir())) == 2
    assert [p.name for p in plan.job_dir.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_a_bad_node_part_way_leaves_an_earlier_job_as_it_was(sample, tmp_path):
    scene, pairs, unlabeled = sample
    job = job_folder.write_training_job(scene, pairs, unlabeled[:1], [], tmp_path / "job", "acdc")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "job").rglob("*")}
    flat = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Flat")  # no image data: refused when it is built
    with pytest.raises(DataError):
        job_folder.write_training_job(scene, pairs, [unlabeled[1], flat], [], tmp_path / "job", "acdc")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "job").rglob("*")} == before and job.is_file()
    with pytest.raises(DataError):
        job_folder.write_training_job(scene, pairs, [flat], [], tmp_path / "new", "acdc")
    assert not (tmp_path / "new").exists()


def test_cancel_while_the_job_is_written_leaves_nothing_and_the_panel_usable(sample, tmp_path):
    scene, pairs, unlabeled = sample
    gate, started, cancelled, errors = run_gate.RunGate(), [], [], []
    assert gate.begin("train")
    plan, steps = module_jobs.training_job_steps(scene, pairs, unlabeled, PanelSettings(preset="acdc", output_root=str(tmp_path)))
    task = sliced_task.SlicedTask(steps, "Writing the training cases")
    ticks = lambda: sliced_task.tick_preparation(gate, task, started.append, errors.append, lambda: cancelled.append(1))  # noqa: E731
    assert ticks() and ticks() and ticks()
    assert len(_images(plan.job_dir)) == 4 and not gate.controls_enabled and task.status.startswith("Writing the training cases: 3/5")
    task.cancel()
    assert not ticks()
    assert (cancelled, started, errors) == ([1], [], []) and gate.controls_enabled
    assert list(tmp_path.iterdir()) == []  # the new run folder went with its files: no job.json, no half job


def test_one_predict_job_for_many_volumes_loaded_one_node_per_step(sample, tmp_path):
    scene, _pairs, volumes = sample
    run = tmp_path / "models" / "run-1" / "run"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": "acdc"}))
    (run / "model.pt").write_bytes(b"weights")
    settings = PanelSettings(preset="la", output_root=str(tmp_path))  # the panel's preset: the model's wins
    gate, started = run_gate.RunGate(), []
    gate.begin("predict")
    task = sliced_task.SlicedTask(module_jobs.prediction_job_steps(scene, volumes, str(run / "model.pt"), settings), "Writing")
    while sliced_task.tick_preparation(gate, task, started.append, pytest.fail, pytest.fail):
        pass
    assert gate.state == run_gate.RUNNING and len(started) == 1
    job = read_job(started[0])
    assert (job.mode, job.preset, len(job.predict_files())) == ("predict", "acdc", 3)

    outcome = blocking_run.run_to_end(StubWorker(started[0]).start())
    assert outcome.returncode == 0 and len(outcome.tracker.predictions) == 3
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    loading = sliced_task.SlicedTask(module_jobs.results_steps(scene, started[0].parent, outcome.events), "Loading")
    added = []
    while loading.tick():
        added.append(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") - before)
    assert added == [0, 1, 2] and loading.state == sliced_task.DONE  # one node per tick (made after each yield)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") - before == 3
    imports = loading.result
    assert [i.volume_node for i in imports] == list(volumes) and all(i.message is None for i in imports)
    for item in imports:
        assert node_selection.source_volume(scene, item.segmentation_node) is item.volume_node
        assert item.segmentation_node.GetSegmentation().GetNumberOfSegments() == 3
