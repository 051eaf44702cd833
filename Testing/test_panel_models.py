"""Models a user can manage, the panel's side without Slicer (issue 34, item 5): "Continue from last
model" refuses a model of another preset before anything is written, and the preset of a model is read
from its run's files (no torch in Slicer's process)."""

from __future__ import annotations

import json

import pytest

from ACTIONPlusPlusLib.slicer_bridge.panel import job_options, model_cards


def _finished_run(root, name, preset, where="config"):
    run = root / name / job_options.RUN_OUTPUT
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"weights")
    if where == "config":
        (run / model_cards.CONFIG_NAME).write_text(json.dumps({"preset": preset, "dim": 3}))
    else:
        (run.parent / model_cards.JOB_NAME).write_text(json.dumps({"version": 1, "preset": preset}))
    return run / "model.pt"


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_continue_refuses_another_presets_model_before_writing_anything(tmp_path):
    _finished_run(tmp_path, "run-20240101-000000", "la")
    before = _tree(tmp_path)
    settings = job_options.PanelSettings(preset="acdc", output_root=str(tmp_path), continue_training=True)
    with pytest.raises(ValueError, match="trained for the LA preset, not ACDC"):
        job_options.plan_run(settings)
    assert _tree(tmp_path) == before


def test_an_interrupted_run_of_another_preset_is_not_resumed(tmp_path):
    run = tmp_path / "run-20240101-000000" / job_options.RUN_OUTPUT
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"x")
    (run.parent / model_cards.JOB_NAME).write_text(json.dumps({"preset": "acdc"}))
    with pytest.raises(ValueError, match="ACDC preset, not LA"):
        job_options.plan_run(job_options.PanelSettings(preset="la", output_root=str(tmp_path), continue_training=True))
    plan = job_options.plan_run(job_options.PanelSettings(preset="acdc", output_root=str(tmp_path), continue_training=True))
    assert plan.resume and plan.job_dir == run.parent


def test_continue_from_the_same_preset(tmp_path):
    model = _finished_run(tmp_path, "run-20240101-000000", "acdc", where="job")
    plan = job_options.plan_run(job_options.PanelSettings(preset="acdc", output_root=str(tmp_path), continue_training=True))
    assert plan.mode == "continue" and plan.model == str(model)


def test_the_preset_of_a_model_from_its_files(tmp_path):
    assert model_cards.model_preset(_finished_run(tmp_path, "a", "LA")) == "la"
    assert model_cards.model_preset(_finished_run(tmp_path, "b", "acdc", where="job")) == "acdc"
    loose = tmp_path / "loose.pt"
    loose.write_bytes(b"x")
    assert model_cards.model_preset(loose) is None and model_cards.preset_mismatch(loose, "la") is None
