"""The panel's pure-Python helpers (ACTIONPlusPlusLib.slicer_bridge.panel), tested without Slicer or Qt."""

from __future__ import annotations

import importlib.metadata
import os
import types
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from ACTIONPlusPlusLib import config
from ACTIONPlusPlusLib.slicer_bridge.panel import (
    api_versions,
    budget_choice,
    formatting,
    install_plan,
    job_options,
    output_folder,
    run_progress,
    selection_checks,
    self_test,
)

# ----------------------------------------------------------------------------------------------- presets


def test_panel_helpers_import_no_qt_slicer_or_torch():
    for path in Path(budget_choice.__file__).parent.glob("*.py"):
        source = path.read_text()
        for name in ("import qt", "import slicer", "import torch", "import ctk", "from slicer", "from torch"):
            assert name not in source, f"{path.name}: {name}"


def test_preset_summary_names_network_classes_and_segments():
    la = budget_choice.preset_summary("la")
    assert "3D V-Net" in la and "2 classes" in la and "LA" in la
    acdc = budget_choice.preset_summary("acdc")
    assert "2D U-Net" in acdc and "4 classes" in acdc
    for name in ("RV", "Myo", "LV"):
        assert name in acdc


def test_budget_paper_is_the_presets_explicit_schedule():
    for name in config.PRESETS:
        cfg = config.preset(name)
        paper = budget_choice.budget_for(name, "paper")
        assert paper.budget_iterations == 0 and paper.overrides == {"budget_iterations": 0}
        assert (paper.warmup, paper.joint, paper.finetune) == (
            cfg.pretrain_warmup_iterations, cfg.pretrain_joint_iterations, cfg.finetune_iterations)


def test_budget_quick_is_one_number_laid_out_by_the_budget_module():
    assert budget_choice.QUICK_BUDGET == {"acdc": 600, "la": 400}
    for name in config.PRESETS:
        quick = budget_choice.budget_for(name, "QUICK")
        assert quick.budget_iterations == budget_choice.QUICK_BUDGET[name] == quick.total
        # below the paper's total pre-training shrinks in proportion; at the quick budget it is dropped,
        # and the notes say so (budget.py; measured: fine-tuning alone is better at this budget)
        assert (quick.warmup, quick.joint, quick.finetune) == (0, 0, quick.total) and quick.notes
        cfg = config.preset(name, **quick.overrides)  # a valid override, and the trainer lays it out the same
        lengths = cfg.phase_lengths()
        assert (lengths.warmup, lengths.joint, lengths.finetune) == (quick.warmup, quick.joint, quick.finetune)
        assert quick.total * 10 <= budget_choice.budget_for(name, "paper").total
    assert budget_choice.budget_for("acdc", "quick").summary.startswith("600 iterations")


def test_budget_custom_iterations_minutes_and_errors():
    custom = budget_choice.budget_for("acdc", "custom", 3000)
    assert custom.overrides == {"budget_iterations": 3000} and custom.total == 3000
    small = budget_choice.budget_for("acdc", "custom", 60)
    assert small.warmup == small.joint == 0 and small.finetune == 60  # short budgets fine-tune only
    dropped = budget_choice.budget_for("acdc", "custom", 2000)  # a 22-iteration phase is dropped, and the notes say so
    assert dropped.finetune == 2000 and len(dropped.notes) == 2
    measured = budget_choice.budget_for("acdc", "custom", 10, "minutes", seconds_per_iteration=0.5)
    assert measured.budget_iterations == 1200 and "measured 0.50 s" in measured.notes[0]
    assumed = budget_choice.budget_for("la", "custom", 30, "minutes")
    assert assumed.budget_iterations == 300 and "assumed 6.0 s" in assumed.notes[0]
    with pytest.raises(ValueError, match="at least 1"):
        budget_choice.budget_for("la", "custom", 0)
    with pytest.raises(ValueError, match="positive"):
        budget_choice.budget_for("la", "custom", 0, "minutes")
    with pytest.raises(ValueError, match="unknown budget unit"):
        budget_choice.budget_for("la", "custom", 5, "hours")
    with pytest.raises(ValueError, match="unknown budget"):
        budget_choice.budget_for("la", "slow")
    with pytest.raises(ValueError, match="unknown preset"):
        budget_choice.budget_for("brain", "paper")


def test_explicit_iterations_for_the_batch_scripts_w_j_f():
    assert budget_choice.explicit_iterations((1, 2, 3)) == {"budget_iterations": 0, **dict(zip(budget_choice.ITERATION_KEYS, (1, 2, 3)))}
    with pytest.raises(ValueError, match="three numbers"):
        budget_choice.explicit_iterations((1, 2))
    with pytest.raises(ValueError, match=">= 0"):
        budget_choice.explicit_iterations((1, -2, 3))
    with pytest.raises(ValueError, match="at least one"):
        budget_choice.explicit_iterations((0, 0, 0))


def test_estimated_time_from_the_measured_speed():
    events = [  # a recorded stream: windows of 10 iterations at 1 s/it, then 30 at 3 s/it
        {"event": "stage", "stage": "pretrain", "total": 40},
        {"event": "progress", "overall_iteration": 10, "seconds_per_iteration": 1.0},
        {"event": "checkpoint", "path": "x"},
        {"event": "progress", "overall_iteration": 40, "seconds_per_iteration": 3.0},
    ]
    assert budget_choice.measured_seconds_per_iteration(events) == pytest.approx((10 * 1 + 30 * 3) / 40)
    assert budget_choice.measured_seconds_per_iteration([{"event": "start"}]) is None
    quick = budget_choice.budget_for("acdc", "quick")
    assert budget_choice.estimate_text(quick, "cuda", 0.1, "acdc").endswith("about 1m00s on cuda (measured 0.10 s/it)")
    assert "assumed 2.0 s/it" in budget_choice.estimate_text(quick, "cpu", None, "acdc")
    assert "about 20m00s" in budget_choice.estimate_text(quick, "cpu", None, "acdc")
    assert budget_choice.speed_key("ACDC", "cuda") == "ACTIONPlusPlus/SecondsPerIteration/acdc-cuda"


def test_device_choice_maps_gpu_to_cuda_or_mps():
    cuda = {"cuda_available": True, "mps_available": False}
    mac = {"cuda_available": False, "mps_available": True}
    assert job_options.job_device("GPU", cuda) == "cuda" and job_options.job_device("GPU", mac) == "mps"
    assert job_options.job_device("GPU", None) == "cuda" and job_options.job_device("CPU", mac) == "cpu"
    assert job_options.effective_device("auto", mac) == "mps" and job_options.effective_device("auto", cuda) == "cuda"
    assert job_options.effective_device("auto", None) == "cpu" and job_options.effective_device("GPU", None) == "cuda"


# ------------------------------------------------------------------------------------------ output folder


def test_default_output_folder_is_persistent_and_per_user(tmp_path):
    assert output_folder.default_output_root(tmp_path) == str(tmp_path / "ACTIONPlusPlus")
    default = Path(output_folder.default_output_root())
    assert default.is_absolute() and default.parent == Path.home()
    import tempfile

    assert not str(default).startswith(tempfile.gettempdir())


def test_output_folder_validation(tmp_path):
    assert output_folder.output_root_problem(str(tmp_path / "new")) is None  # may not exist yet
    assert "Choose an output folder" in output_folder.output_root_problem("")
    assert "Choose an output folder" in output_folder.output_root_problem(None)
    for relative in (".", "..", "runs", "./runs"):
        assert "relative path" in output_folder.output_root_problem(relative), relative
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    assert "is a file" in output_folder.output_root_problem(str(afile))
    assert output_folder.output_root_problem("~/ACTIONPlusPlus") is None  # the user's home is expanded
    temporary = tmp_path / "SlicerTemp"
    assert "temporary folder" in output_folder.output_root_warning(str(temporary / "ACTIONPlusPlus"), str(temporary))
    assert output_folder.output_root_warning(str(tmp_path / "mine"), str(temporary)) is None
    # the panel's start value: the scene's folder, else the last chosen, else the default
    assert output_folder.initial_output_root(str(tmp_path / "a"), str(tmp_path / "b"), tmp_path) == str(tmp_path / "a")
    assert output_folder.initial_output_root(".", str(tmp_path / "b"), tmp_path) == str(tmp_path / "b")
    assert output_folder.initial_output_root("", "relative", tmp_path) == str(tmp_path / "ACTIONPlusPlus")
    for bad in (".", "relative/path", ""):
        with pytest.raises(ValueError):
            job_options.plan_run(job_options.PanelSettings(output_root=bad))


# ------------------------------------------------------------------------------- run plan, job options


def test_new_run_folder_is_unique_and_timestamped(tmp_path):
    now = 1_700_000_000.0
    first = output_folder.new_run_folder(tmp_path, now)
    assert first.parent == tmp_path and first.name.startswith("run-")
    first.mkdir()
    second = output_folder.new_run_folder(tmp_path, now)
    assert second != first and second.name == first.name + "-2"
    assert output_folder.new_run_folder(tmp_path, now, prefix="predict").name.startswith("predict-")


def test_plan_run_fresh_resume_and_continue(tmp_path):
    settings = job_options.PanelSettings(preset="la", output_root=str(tmp_path))
    plan = job_options.plan_run(settings, now=1_700_000_000.0)
    assert plan.mode == "train" and not plan.resume and plan.model is None
    assert plan.job_dir.parent == tmp_path and plan.output_dir == plan.job_dir / job_options.RUN_OUTPUT
    assert "New run" in plan.description

    settings.continue_training = True
    with pytest.raises(ValueError, match="no previous run"):
        job_options.plan_run(settings)

    # an interrupted run (checkpoint, no model) is resumed in place
    interrupted = tmp_path / "run-20240101-000000" / job_options.RUN_OUTPUT
    interrupted.mkdir(parents=True)
    (interrupted / "checkpoint.pt").write_bytes(b"x")
    plan = job_options.plan_run(settings)
    assert plan.resume and plan.mode == "train" and plan.job_dir == interrupted.parent
    assert "Resuming" in plan.description

    # a newer finished run is the warm start of a new run
    finished = tmp_path / "run-20240202-000000" / job_options.RUN_OUTPUT
    finished.mkdir(parents=True)
    (finished / "model.pt").write_bytes(b"x")
    later = (interrupted / "checkpoint.pt").stat().st_mtime + 10
    os.utime(finished / "model.pt", (later, later))
    plan = job_options.plan_run(settings, now=1_800_000_000.0)
    assert plan.mode == "continue" and not plan.resume
    assert plan.model == str(finished / "model.pt")
    assert plan.job_dir not in (finished.parent, interrupted.parent)
    assert "Continuing" in plan.description

    with pytest.raises(ValueError, match="output folder"):
        job_options.plan_run(job_options.PanelSettings(output_root=""))


def test_build_job_options_matches_the_job_fields(tmp_path):
    settings = job_options.PanelSettings(preset="acdc", budget_mode="quick", device="GPU", confidence=True, seed=3,
                                output_root=str(tmp_path), extra_overrides={"patch_size": [64, 64]})
    plan = job_options.plan_run(settings)
    options = job_options.build_job_options(settings, plan)
    assert options["device"] == "cuda"
    assert options["write_confidence"] is True and options["seed"] == 3
    assert options["mode"] == "train" and options["resume"] is False and options["model"] is None
    assert options["overrides"] == {"budget_iterations": 600, "patch_size": [64, 64]}
    custom = job_options.PanelSettings(preset="la", budget_mode="custom", budget_value=20, budget_unit="minutes",
                              seconds_per_iteration=2.0, output_root=str(tmp_path))
    assert job_options.build_job_options(custom)["overrides"] == {"budget_iterations": 600}
    assert job_options.build_job_options(job_options.PanelSettings(device="mps"))["device"] == "mps"
    config.preset("acdc", **options["overrides"])  # valid overrides

    from ACTIONPlusPlusLib.jobs import TrainingJob

    fields = {f for f in TrainingJob.__dataclass_fields__}
    assert set(options) <= fields, set(options) - fields

    assert job_options.build_job_options(job_options.PanelSettings(device="CPU"))["device"] == "cpu"
    assert job_options.build_job_options(job_options.PanelSettings(device="cuda:1"))["device"] == "cuda:1"
    with pytest.raises(ValueError, match="unknown device"):
        job_options.build_job_options(job_options.PanelSettings(device="tpu"))


def test_job_options_are_accepted_by_write_training_job(tmp_path):
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    from ACTIONPlusPlusLib.slicer_bridge.job_folder import write_training_job

    accepted = api_versions.accepted_keywords(write_training_job)
    # write_training_job's signature spells out its keywords (iter_training_job's): a renamed one must show here
    assert isinstance(accepted, set), accepted
    settings = job_options.PanelSettings(preset="acdc", budget_mode="quick", device="CPU", confidence=True,
                                output_root=str(tmp_path))
    options = job_options.build_job_options(settings, job_options.plan_run(settings))
    assert set(options) <= accepted, set(options) - accepted
    assert {"output_dir", "overrides", "device", "mode", "model", "resume"} <= accepted
    kept, dropped = api_versions.adapt_options(options, accepted)
    assert kept == options and dropped == []


def test_call_with_supported_drops_unknown_keywords():
    def old_api(requirements, prompt_install=True):
        return requirements, prompt_install

    def new_api(requirements, **kwargs):
        return requirements, kwargs

    assert api_versions.call_with_supported(old_api, ["a"], prompt_install=False, skip_packages=["torch"]) == (["a"], False)
    assert api_versions.call_with_supported(new_api, ["a"], skip_packages=["torch"]) == (["a"], {"skip_packages": ["torch"]})
    kept, dropped = api_versions.adapt_options({"a": 1, "b": 2, "c": None}, {"a"})
    assert kept == {"a": 1} and dropped == ["b"]

    def explicit(a, b=1, *args, c, d=2):
        return a

    assert api_versions.accepted_keywords(old_api) == {"requirements", "prompt_install"}
    assert api_versions.accepted_keywords(explicit) == {"a", "b", "c", "d"}  # not *args
    assert api_versions.accepted_keywords(new_api) is None  # **kwargs: everything is accepted
    assert api_versions.call_with_supported(explicit, 1, c=3, d=4, e=5) == 1
    # no signature at all (some C callables): None, i.e. pass everything on
    assert api_versions.accepted_keywords(object()) is None
    kept, dropped = api_versions.adapt_options({"a": 1, "b": 2}, None)
    assert kept == {"a": 1, "b": 2} and dropped == []


# ------------------------------------------------------------------------------------------ disk space


def test_free_disk_message(tmp_path):
    usage = namedtuple("usage", "total used free")
    assert output_folder.free_disk_message(tmp_path / "not" / "yet", 10, lambda p: usage(100, 0, 100)) is None
    message = output_folder.free_disk_message(tmp_path / "not" / "yet", 5 * output_folder.GiB, lambda p: usage(100, 100, 2 * output_folder.MiB))
    assert message and "Not enough free disk space" in message and str(tmp_path) in message
    assert "2.0 MB free" in message and "5.0 GB" in message

    def broken(path):
        raise OSError("device gone")

    assert "Cannot check" in output_folder.free_disk_message(tmp_path, 1, broken)
    # the default looks shutil.disk_usage up at call time
    assert output_folder.free_disk_message(tmp_path, 1) is None


def test_required_disk_bytes_grows_with_data():
    small = output_folder.required_disk_bytes(10**6)
    big = output_folder.required_disk_bytes(10**8)
    assert big > small > 300 * output_folder.MiB
    assert output_folder.required_disk_bytes(10**6, 10**6, confidence=True) > output_folder.required_disk_bytes(10**6, 10**6)
    assert formatting.format_bytes(512) == "512 B" and formatting.format_bytes(1536) == "1.5 KB"


# -------------------------------------------------------------------------------------- selection checks


def test_selection_problems():
    names = {"v1": "MRI 1", "v2": "MRI 2", "s1": "Seg 1"}
    assert selection_checks.selection_problems([("v1", "s1")], ["v2"], names) == []
    assert "at least one labeled case" in selection_checks.selection_problems([], ["v2"])[0]
    both = selection_checks.selection_problems([("v1", "s1")], ["v1", "v2"], names)
    assert len(both) == 1 and "'MRI 1' is both labeled" in both[0]
    twice = selection_checks.selection_problems([("v1", "s1"), ("v1", "s2")], [], names)
    assert any("labeled twice" in p for p in twice)
    missing = selection_checks.selection_problems([("v1", None)], [])
    assert any("needs both" in p for p in missing)


def test_segments_problem_uses_names_synonyms_and_codes():
    from ACTIONPlusPlusLib.slicer_bridge import terminology

    assert selection_checks.segments_problem("Seg", ["LA"], "la") is None
    assert selection_checks.segments_problem("Seg", ["left atrium"], "la") is None
    assert selection_checks.segments_problem("Seg", ["Segment_1", "lv_blood-pool"], "acdc") is None
    coded = [("Segment_1", terminology.classes("acdc")[1].terminology_entry)]
    assert selection_checks.segments_problem("Seg", coded, "acdc") is None
    message = selection_checks.segments_problem("Liver seg", ["Liver", "Spleen"], "acdc")
    assert "'Liver seg'" in message and "'Liver'" in message and "RV, Myo, LV" in message
    assert "no segments" in selection_checks.segments_problem("Empty", [], "la")
    # LV is not a class of the LA preset
    assert selection_checks.segments_problem("Seg", ["LV"], "la") is not None


def test_unlabeled_candidates_keep_scene_order():
    assert selection_checks.unlabeled_candidates(["a", "b", "c", "d"], ["c", "a"]) == ["b", "d"]


# ----------------------------------------------------------------------------------------------- progress


def test_format_duration():
    assert formatting.format_duration(12) == "12s"
    assert formatting.format_duration(252) == "4m12s"
    assert formatting.format_duration(3900) == "1h05"
    assert formatting.format_duration(3 * 86400 + 7200) == "3d02h"
    assert formatting.format_duration(None) == "?" and formatting.format_duration(float("nan")) == "?"
    assert formatting.format_duration(-1) == "?" and formatting.format_duration(float("inf")) == "?"


def test_format_progress_line():
    event = {"event": "progress", "stage": "finetune", "phase": "finetune", "iteration": 1200, "total": 20000,
             "overall_iteration": 11200, "overall_total": 30000, "loss": 0.4312, "seconds_per_iteration": 0.2137,
             "eta_seconds": 3900}
    assert run_progress.format_progress(event) == "Stage 2/2 fine-tuning \u00b7 it 1200/20000 \u00b7 loss 0.43 \u00b7 0.21 s/it \u00b7 ETA 1h05"
    warm = dict(event, stage="pretrain", phase="warmup", iteration=10, total=10000, loss=12.5, seconds_per_iteration=12.0)
    assert run_progress.format_progress(warm).startswith("Stage 1/2 pre-training (warm-up) \u00b7 it 10/10000 \u00b7 loss 12.5 \u00b7 12 s/it")
    sup = {"event": "progress", "stage": "supervised", "iteration": 3, "total": 5}
    assert run_progress.format_progress(sup, two_stages=False) == "Supervised training \u00b7 it 3/5"
    assert formatting.format_loss(float("nan")) == "nan" and formatting.format_loss(1e-4) == "1.00e-04" and formatting.format_loss(None) == "?"


def test_overall_percent_spans_both_stages():
    assert run_progress.overall_percent({"overall_iteration": 15, "overall_total": 60}) == 25.0
    assert run_progress.overall_percent({"overall_iteration": 90, "overall_total": 60}) == 100.0
    totals = {"pretrain": 20, "finetune": 80}
    assert run_progress.overall_percent({"stage": "pretrain", "iteration": 10, "total": 20}, totals) == 10.0
    assert run_progress.overall_percent({"stage": "finetune", "iteration": 40, "total": 80}, totals) == 60.0
    assert run_progress.overall_percent({"stage": "finetune", "iteration": 40, "total": 80}) == 50.0
    assert run_progress.overall_percent({}) == 0.0


def _run_events():
    return [
        {"event": "start", "device": "cpu", "torch": "2.13.0"},
        {"event": "stage", "stage": "pretrain", "phase": "warmup", "total": 20, "iteration": 0},
        {"event": "progress", "stage": "pretrain", "phase": "warmup", "iteration": 10, "total": 20,
         "overall_iteration": 10, "overall_total": 100, "loss": 1.5, "seconds_per_iteration": 0.5, "eta_seconds": 45},
        {"event": "stage", "stage": "pretrain", "phase": "joint", "total": 20, "iteration": 10},
        {"event": "checkpoint", "path": "/x/checkpoint.pt", "stage": "pretrain", "iteration": 20},
        {"event": "stage", "stage": "finetune", "phase": "finetune", "total": 80, "iteration": 0},
        {"event": "warning", "message": "2 unlabeled cases only"},
        {"event": "progress", "stage": "finetune", "phase": "finetune", "iteration": 40, "total": 80,
         "overall_iteration": 60, "overall_total": 100, "loss": 0.25, "seconds_per_iteration": 0.5, "eta_seconds": 20},
        {"event": "stage", "stage": "predict", "phase": "predict", "total": 2},
        {"event": "prediction", "input": "/x/a.nrrd", "output": "/x/run/predictions/a.nrrd", "case": "a", "index": 1, "total": 2},
        {"event": "done", "model": "/x/run/model.pt", "predictions": ["/x/run/predictions/a.nrrd", "/x/run/predictions/b.nrrd"], "exit_code": 0},
    ]


def test_progress_tracker_folds_a_whole_run():
    tracker = run_progress.ProgressTracker()
    lines = [tracker.handle(e) for e in _run_events()[:3]]
    assert lines[0] == "Worker started on cpu (torch 2.13.0)"
    assert tracker.percent == 10.0 and tracker.status.startswith("Stage 1/2 pre-training (warm-up)")
    for event in _run_events()[3:8]:
        tracker.handle(event)
    assert tracker.percent == 60.0 and tracker.status.startswith("Stage 2/2 fine-tuning")
    assert tracker.checkpoint == "/x/checkpoint.pt" and tracker.warnings == ["2 unlabeled cases only"]
    assert tracker.stage_totals == {"pretrain": 20, "finetune": 80}
    assert tracker.handle(_run_events()[8]) == "Predicting 2 volume(s)"
    assert tracker.handle(_run_events()[9]) == "Predicted a (1/2)"
    assert tracker.percent == 60.0  # prediction after training does not move the training bar back
    assert tracker.handle(_run_events()[10]).startswith("Done. Model: /x/run/model.pt")
    assert tracker.done and tracker.percent == 100.0 and tracker.exit_code == 0
    assert tracker.predictions == ["/x/run/predictions/a.nrrd", "/x/run/predictions/b.nrrd"]
    assert tracker.outcome_message(0) == "Finished."
    assert tracker.handle({"event": "something new"}) is None


def test_progress_tracker_predict_only_job_moves_the_bar():
    tracker = run_progress.ProgressTracker()
    tracker.handle({"event": "stage", "stage": "predict", "phase": "predict", "total": 4})
    tracker.handle({"event": "prediction", "output": "o", "case": "c", "index": 1, "total": 4})
    assert tracker.percent == 25.0


def test_progress_tracker_says_when_the_model_is_being_saved():
    tracker = run_progress.ProgressTracker()
    tracker.handle({"event": "stage", "stage": "finetune", "phase": "finetune", "total": 400})
    tracker.handle({"event": "progress", "stage": "finetune", "phase": "finetune", "iteration": 400, "total": 400,
                    "overall_iteration": 400, "overall_total": 400, "loss": 0.5})
    line = tracker.handle({"event": "stage", "stage": "export", "phase": "export", "total": 32})
    assert line == tracker.status and "Saving the model" in line and "32 batches" in line
    assert tracker.percent == 100.0 and "export" not in tracker.stage_totals  # not an iteration stage


def test_progress_tracker_errors_and_cancel():
    tracker = run_progress.ProgressTracker()
    tracker.handle({"event": "error", "message": "volume 'MRI' is 2D", "type": "DataError", "exit_code": 2})
    assert tracker.error == "volume 'MRI' is 2D" and tracker.exit_code == 2
    message = tracker.outcome_message(2)
    assert "rejected the input" in message and "volume 'MRI' is 2D" in message

    crashed = run_progress.ProgressTracker()
    crashed.handle({"event": "error", "message": "worker was killed by SIGKILL: Killed", "type": "WorkerCrash", "exit_code": -9})
    assert "signal 9" in crashed.outcome_message(-9) and "SIGKILL" in crashed.outcome_message(-9)

    cancelled = run_progress.ProgressTracker()
    cancelled.handle({"event": "cancelled", "message": "training was cancelled after 12 iterations",
                      "checkpoint": "/x/checkpoint.pt", "resumable": True, "exit_code": 4})
    assert cancelled.cancelled and cancelled.resumable and cancelled.checkpoint == "/x/checkpoint.pt"
    assert "Continue from last model" in cancelled.outcome_message(None)
    early = run_progress.ProgressTracker()
    early.handle({"event": "cancelled", "message": "cancelled before training started; nothing to resume", "resumable": False, "exit_code": 4})
    assert early.outcome_message(4) == "Cancelled. cancelled before training started; nothing to resume"


def test_exit_code_messages():
    assert run_progress.exit_code_message(0) == "Finished."
    assert "still running" in run_progress.exit_code_message(None)
    assert "(for example a NaN loss)" in run_progress.exit_code_message(3, "loss is NaN")
    assert run_progress.exit_code_message(3, "loss is NaN").endswith("loss is NaN")
    assert "code 7" in run_progress.exit_code_message(7)
    assert "signal 11" in run_progress.exit_code_message(-11)


# ------------------------------------------------------------------------------------------- dependencies


def test_requirements_are_checked_by_version():
    versions = {"h5py": "3.9.0", "medpy": "0.4.0", "psutil": "6.0", "tqdm": "4.66.1"}

    def version_of(name):
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    assert install_plan.missing_requirements(install_plan.ALL_REQUIREMENTS, version_of) == ["medpy>=0.5"]
    assert install_plan.missing_requirements(install_plan.EXTRA_REQUIREMENTS, version_of) == []  # the panel needs no medpy
    assert install_plan.missing_requirements(["absent>=1", "psutil"], version_of) == ["absent>=1"]
    assert install_plan.requirement_satisfied("tqdm>=4.60", version_of)
    assert not install_plan.requirement_satisfied("tqdm>=4.67", version_of)


def test_extra_requirements_match_pyproject_and_never_touch_protected_packages():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = {r.split(">=")[0].strip().lower(): r for r in pyproject["project"]["dependencies"]}
    for requirement in (*install_plan.ALL_REQUIREMENTS, install_plan.TORCH_REQUIREMENT):
        name = requirement.split(">=")[0].lower()
        assert name in declared, f"{requirement} is not a dependency in pyproject.toml"
    protected = {p.lower() for p in install_plan.PROTECTED_PACKAGES}
    assert {"simpleitk", "torch"} <= protected
    assert not any(r.split(">=")[0].lower() in protected for r in install_plan.ALL_REQUIREMENTS)
    # the panel installs only what its path (runner, worker train / predict) imports
    assert install_plan.EXTRA_REQUIREMENTS == ("psutil>=5.9",)
    assert set(install_plan.OPTIONAL_REQUIREMENTS) == {"h5py>=3.8", "medpy>=0.5", "tqdm>=4.60"}
    commands = install_plan.pip_install_commands(install_plan.ALL_REQUIREMENTS)
    assert "medpy>=0.5 --no-deps" in commands  # medpy would otherwise pull SimpleITK
    assert all("--no-deps" not in c for c in commands if not c.startswith("medpy"))
    # every other dependency of pyproject.toml is something Slicer ships
    shipped = {"numpy", "scipy", "simpleitk"}
    covered = {r.split(">=")[0].lower() for r in (*install_plan.ALL_REQUIREMENTS, install_plan.TORCH_REQUIREMENT)}
    assert set(declared) <= covered | shipped, set(declared) - covered - shipped


def test_torch_available_does_not_import():
    assert install_plan.torch_available(lambda name: object()) is True
    assert install_plan.torch_available(lambda name: None) is False

    def broken(name):
        raise ValueError("bad spec")

    assert install_plan.torch_available(broken) is False


def test_install_texts():
    text = install_plan.install_confirmation_text(True, ["h5py>=3.8", "medpy>=0.5"])
    assert "torch>=2.1" in text and "PyTorch extension" in text and "h5py>=3.8" in text and "medpy>=0.5" in text
    assert "SimpleITK" in text  # says it is left alone
    assert "from PyPI" in install_plan.install_confirmation_text(True, [], torch_via_extension=False)
    assert "torch" not in install_plan.install_confirmation_text(False, ["tqdm>=4.60"]).split("\n")[2]
    headless = install_plan.headless_install_message(True, ["psutil>=5.9"])
    assert "--no-main-window" in headless and "installTorch" in headless and "pip_install('psutil>=5.9')" in headless
    assert "installTorch" not in install_plan.headless_install_message(False, ["psutil>=5.9"])


def test_find_pip_ensure_across_slicer_versions():
    def ensure(requirements, **kwargs):
        return None

    assert install_plan.find_pip_ensure(types.SimpleNamespace(packaging=types.SimpleNamespace(pip_ensure=ensure))) is ensure
    assert install_plan.find_pip_ensure(types.SimpleNamespace(pydeps=types.SimpleNamespace(pip_ensure=ensure))) is ensure
    old = types.SimpleNamespace(util=types.SimpleNamespace(pip_install=lambda r: None))
    assert install_plan.find_pip_ensure(old) is None


def test_format_device_info():
    assert "not installed" in formatting.format_device_info(None)
    cpu = {"torch": "2.13.0", "torch_cuda": None, "cuda_available": False, "cpu_count": 16}
    assert formatting.format_device_info(cpu) == "CPU only (16 cores) \u00b7 torch 2.13.0 (CPU-only build)"
    assert formatting.format_device_info({**cpu, "cpu_bf16": True}).startswith("CPU only (16 cores, bf16) \u00b7")
    gpu = {"torch": "2.13.0", "torch_cuda": "12.8", "cuda_available": True,
           "cuda_devices": [{"name": "NVIDIA H100", "memory_gib": 79.6}]}
    assert formatting.format_device_info(gpu) == "GPU: NVIDIA H100 (79.6 GiB) \u00b7 torch 2.13.0 (CUDA 12.8)"


def test_format_device_info_with_the_real_describe_devices():
    from ACTIONPlusPlusLib.device import describe_devices

    text = formatting.format_device_info(describe_devices())
    assert "torch" in text and ("CPU only" in text or text.startswith("GPU:"))


# ----------------------------------------------------------------------------------------------- self-test


def test_dice_and_chance():
    ref = np.zeros((2, 10, 10), np.uint8)
    ref[:, 2:6, 2:6] = 1
    assert self_test.dice(ref, ref, 1) == 1.0
    assert self_test.dice(np.zeros_like(ref), ref, 1) == 0.0
    assert self_test.dice(np.zeros_like(ref), np.zeros_like(ref), 2) == 1.0  # absent in both
    f = 32 / 200
    assert self_test.chance_dice(ref, 1) == pytest.approx(2 * f / (1 + f))
    assert self_test.dice(np.ones_like(ref), ref, 1) == pytest.approx(self_test.chance_dice(ref, 1))


# ------------------------------------------------------------------ torch version, install steps, packages


def _versions(**installed):
    def version_of(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    return version_of


def test_torch_version_is_checked_without_importing_it():
    assert install_plan.torch_version_problem(_versions(torch="2.13.0+cu128")) is None
    assert install_plan.torch_version_problem(_versions()) is None  # absent: the installer's job, not a version problem
    problem = install_plan.torch_version_problem(_versions(torch="1.13.1+cu117"))
    assert "torch 1.13.1+cu117 is installed" in problem and "torch>=2.1" in problem
    assert "PyTorch Utils" in problem and "forceReinstall=True" in problem and "restart Slicer" in problem


def test_install_steps_each_with_a_manual_command():
    steps = install_plan.install_steps(True, ["psutil>=5.9"], torch_via_extension=True, has_pip_ensure=False)
    assert [s.method for s in steps] == ["pytorch-extension", "pip_install"]
    assert "PyTorch extension" in steps[0].title and "installTorch(askConfirmation=True" in steps[0].manual
    assert steps[1].manual == "slicer.util.pip_install('psutil>=5.9')"
    assert [s.method for s in install_plan.install_steps(True, [], torch_via_extension=False, has_pip_ensure=True)] == ["pip_ensure"]
    assert install_plan.install_steps(False, [], True) == []
    medpy = install_plan.install_steps(False, ["medpy>=0.5"])[0]
    assert "--no-deps" in medpy.manual
    failure = install_plan.install_failure_text(steps[1], OSError("no network"))
    assert "failed (no network)" in failure and "Python console" in failure and steps[1].manual in failure


def test_package_info_line():
    line = install_plan.package_info_line(_versions(torch="2.13.0", psutil="7.2.2"), "3.12.4", {"torch_cuda": "12.8"})
    assert line == "ACTION++ 0.1.0 \u00b7 Python 3.12.4 \u00b7 torch 2.13.0 (CUDA 12.8) \u00b7 psutil 7.2.2"
    assert "torch not installed" in install_plan.package_info_line(_versions(psutil="7"), "3.12.4")


def test_format_device_info_mps_precision_and_errors():
    mac = {"torch": "2.13.0", "torch_cuda": None, "cuda_available": False, "mps_available": True}
    assert formatting.format_device_info(mac).startswith("GPU: Apple MPS")
    t4 = {"torch": "2.13.0", "torch_cuda": "12.8", "cuda_available": True,
          "cuda_devices": [{"name": "Tesla T4", "memory_gib": 15.0, "precision": "fp16 mixed precision with loss scaling"}]}
    assert formatting.format_device_info(t4) == "GPU: Tesla T4 (15.0 GiB, fp16) \u00b7 torch 2.13.0 (CUDA 12.8)"
    assert "exit code 1" in formatting.format_device_info({"error": "the device query failed (exit code 1)"})


def test_close_during_run_questions():
    assert "checkpoint" in formatting.close_during_run_question("train", "application")
    assert "background" in formatting.close_during_run_question("predict", "scene")
    assert formatting.close_during_run_question("predict", "scene").startswith("Prediction")


# ------------------------------------------------------------------- pseudo-labels and the loss chart


def _finetune_event(iteration, pseudo_myo, loss=0.5):
    return {"event": "progress", "stage": "finetune", "phase": "finetune", "iteration": iteration, "total": 100,
            "overall_iteration": 20 + iteration, "overall_total": 120, "loss": loss,
            "losses": {"total": loss, "sup": loss / 2, "unsup": 0.1}, "seconds_per_iteration": 0.2, "eta_seconds": 10,
            "pseudo_labels": {"labeled_fraction": {"background": 0.7, "RV": 0.1, "Myo": 0.1, "LV": 0.1},
                              "pseudo_fraction": {"background": 0.8 - pseudo_myo, "RV": 0.1, "Myo": pseudo_myo, "LV": 0.1},
                              "mask_fraction": 0.62}}


def test_pseudo_label_report_and_collapse():
    healthy = _finetune_event(10, 0.09)["pseudo_labels"]
    line = run_progress.format_pseudo_labels(healthy)
    assert line.startswith("Pseudo-labels: 62% of unlabeled pixels kept")
    assert "Myo 9% (labeled 10%)" in line and "background" not in line and "collapsing" not in line
    assert run_progress.pseudo_label_collapse(healthy) == []
    collapsed = _finetune_event(20, 0.01)["pseudo_labels"]
    assert run_progress.pseudo_label_collapse(collapsed) == ["Myo"]
    assert run_progress.format_pseudo_labels(collapsed).endswith("collapsing: Myo")
    assert run_progress.format_pseudo_labels(None) is None and run_progress.pseudo_label_collapse({}) == []


def test_loss_history_from_a_recorded_event_stream():
    history = run_progress.LossHistory()
    stream = [{"event": "stage", "stage": "pretrain", "total": 20},
              {"event": "progress", "stage": "pretrain", "phase": "warmup", "overall_iteration": 10, "loss": 2.0,
               "losses": {"total": 2.0, "global": 2.0}},
              {"event": "checkpoint", "path": "x"},
              _finetune_event(10, 0.09, loss=0.8), _finetune_event(20, 0.01, loss=0.6)]
    added = [history.add(e) for e in stream]
    assert added == [False, True, False, True, True]
    assert history.columns[:3] == ["iteration", "loss", "loss global"]
    assert history.column("iteration") == [10.0, 30.0, 40.0]
    assert history.column("loss") == [2.0, 0.8, 0.6]
    assert np.isnan(history.column("loss sup")[0]) and history.column("loss sup")[1:] == [0.4, 0.3]
    assert history.column("pseudo Myo")[1:] == [0.09, 0.01] and history.column("labeled Myo")[2] == 0.1
    assert history.column("mask fraction")[1:] == [0.62, 0.62]
    assert "loss" in history.loss_columns and "loss total" not in history.columns
    assert set(history.fraction_columns) == {f"{k} {c}" for k in ("pseudo", "labeled") for c in ("RV", "Myo", "LV")} | {"mask fraction"}


def test_progress_tracker_shows_pseudo_labels_and_warns_once_on_collapse():
    tracker = run_progress.ProgressTracker()
    line = tracker.handle(_finetune_event(10, 0.09))
    assert "\n  Pseudo-labels: 62%" in line and not tracker.warnings
    line = tracker.handle(_finetune_event(20, 0.01))
    assert "pseudo-labels collapsing: Myo" in tracker.status and "Warning: pseudo-labels of Myo" in line
    tracker.handle(_finetune_event(30, 0.01))
    assert len(tracker.warnings) == 1  # once per class, not on every line
    assert len(tracker.history.rows) == 3 and tracker.seconds_per_iteration == pytest.approx(0.2)


def test_worker_path_imports_no_medpy_h5py_or_tqdm():
    """The panel installs neither: the worker's train / predict path must import without them."""
    import subprocess
    import sys

    code = ("import sys\n"
            "for name in ('medpy', 'h5py', 'tqdm'): sys.modules[name] = None  # hidden: importing them fails\n"
            "import ACTIONPlusPlusLib.worker, ACTIONPlusPlusLib.training, ACTIONPlusPlusLib.inference\n"
            "import ACTIONPlusPlusLib.model_io, ACTIONPlusPlusLib.data.layout, ACTIONPlusPlusLib.data.generic\n"
            "import ACTIONPlusPlusLib.slicer_bridge.runner, ACTIONPlusPlusLib.jobs\n"
            "import pkgutil, ACTIONPlusPlusLib.slicer_bridge.panel as panel\n"
            "for info in pkgutil.iter_modules(panel.__path__): __import__(panel.__name__ + '.' + info.name)\n"
            "from ACTIONPlusPlusLib.data.layout import load_dataset\n"
            "print('ok')\n")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
