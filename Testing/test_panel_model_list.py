"""The panel's model list without Slicer (issue 34, "models a user can manage"): every model under the
output folder with its card read from the run's files, rename kept in the card (atomic, nothing moved),
delete that removes the model's own run folder and nothing else, and a picked model as the warm start.
Also run under Python 3.9 by Testing/py39_panel_check.py (Slicer 5.6/5.8's Python)."""

from __future__ import annotations

import json
import os

import pytest

from ACTIONPlusPlusLib.slicer_bridge.panel import job_options, model_list


def _panel_run(root, name, preset="acdc", labeled=2, unlabeled=3, budget=600, device="cpu"):
    """A finished run as the panel writes it: ROOT/run-*/{job.json,nodes.json,run/{config.json,model.pt}}."""
    job = root / name
    run = job / "run"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"weights")
    (run / "checkpoint.pt").write_bytes(b"state")
    (run / "config.json").write_text(json.dumps({"preset": preset, "budget_iterations": budget, "device": "auto"}))
    (job / "job.json").write_text(json.dumps({"version": 1, "preset": preset, "device": device}))
    entries = [{"role": "labeled"}] * labeled + [{"role": "unlabeled"}] * unlabeled
    (job / "nodes.json").write_text(json.dumps({"preset": preset, "entries": entries}))
    (job / "dataset").mkdir()
    (job / "dataset" / "case.nrrd").write_bytes(b"x" * 10)
    return run / "model.pt"


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_every_model_under_the_output_folder_is_listed_with_its_card(tmp_path):
    old = _panel_run(tmp_path, "run-20260101-000000", "la", labeled=8, unlabeled=72, budget=0)
    (old.parent / "config.json").write_text(json.dumps({"preset": "la", "budget_iterations": 0, "pretrain_warmup_iterations": 1000,
                                                         "pretrain_joint_iterations": 4000, "finetune_iterations": 15000}))
    os.utime(old, (1_700_000_000, 1_700_000_000))
    new = _panel_run(tmp_path, "run-20260102-000000", "acdc")
    (new.parent / "evaluation.json").write_text(json.dumps({"summary": {"mean": {"dice": 0.8712}}}))
    cli = tmp_path / "acdc7"
    cli.mkdir()
    (cli / "model.pt").write_bytes(b"w")
    (cli / "config.json").write_text(json.dumps({"preset": "acdc", "budget_iterations": 3000}))
    (tmp_path / "predict-20260103-000000" / "run").mkdir(parents=True)  # a prediction job: no model of its own
    (tmp_path / "link").symlink_to(new.parent.parent)

    cards = model_list.list_models(tmp_path)
    assert [c.path for c in cards][-1] == old and set(c.path for c in cards) == {old, new, cli / "model.pt"}
    card = next(c for c in cards if c.path == new)
    assert (card.name, card.preset, card.cases, card.budget, card.device, card.dice) == (
        "run-20260102-000000", "acdc", "2 + 3", "600 it", "cpu", "87.1")
    assert card.run_folder == new.parent.parent.resolve()
    la = next(c for c in cards if c.path == old)
    assert (la.preset, la.cases, la.budget_iterations, la.dice) == ("la", "8 + 72", 20000, "")
    assert la.row()[:3] == ["run-20260101-000000", "LA", la.date] and la.date.startswith("2023-11-")
    assert next(c for c in cards if c.path == cli / "model.pt").run_folder == cli.resolve()
    assert model_list.list_models(tmp_path / "missing") == []


def test_the_card_the_panel_writes_wins_and_rename_moves_nothing(tmp_path):
    model = _panel_run(tmp_path, "run-20260101-000000")
    model_list.write_card(model, device="cuda", validation_dice=0.9, labeled=None)
    before = _tree(tmp_path)
    card = model_list.rename_model(model_list.read_card(model, tmp_path), "  ACDC 7 patients, corrected  ")
    assert card.name == "ACDC 7 patients, corrected"
    again = model_list.read_card(model, tmp_path)
    assert (again.name, again.device, again.dice, again.labeled) == ("ACDC 7 patients, corrected", "cuda", "90.0", 2)
    assert _tree(tmp_path) == sorted(before)  # the card file already existed: no file moved or added
    assert not [p for p in tmp_path.rglob("*.tmp*")]
    for bad in ("", "   ", "two\nlines", "x" * 81):
        with pytest.raises(ValueError):
            model_list.rename_model(again, bad)
    assert model_list.read_card(model, tmp_path).name == "ACDC 7 patients, corrected"


def test_delete_removes_that_models_run_folder_and_nothing_else(tmp_path):
    keep = _panel_run(tmp_path, "run-20260101-000000")
    doomed = _panel_run(tmp_path, "run-20260102-000000")
    (tmp_path / "notes.txt").write_text("mine")
    card = model_list.read_card(doomed, tmp_path)
    assert "run-20260102-000000" in model_list.delete_question(card) and "files" in model_list.delete_question(card)
    before = [p for p in _tree(tmp_path) if not p.startswith("run-20260102-000000")]
    assert model_list.delete_model(card) == doomed.parent.parent.resolve()
    assert _tree(tmp_path) == before and keep.is_file()
    assert [c.path for c in model_list.list_models(tmp_path)] == [keep]


def test_delete_refuses_what_is_not_the_models_own_run_folder(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    loose = root / "model.pt"  # in the output folder itself: deleting its folder would delete everything
    loose.write_bytes(b"w")
    elsewhere = _panel_run(tmp_path, "run-20260101-000000")  # outside the listed folder
    deep = _panel_run(root / "project", "run-20260101-000000")  # two levels down: not a run folder of the list
    for model in (loose, elsewhere, deep):
        card = model_list.read_card(model, root)
        assert card.run_folder is None
        with pytest.raises(ValueError, match="not in a run folder"):
            model_list.delete_model(card)
    running = _panel_run(root, "run-20260102-000000")
    (running.parent / ".actionpp.lock").write_text("{}")
    with pytest.raises(ValueError, match="lock file"):
        model_list.delete_model(model_list.read_card(running, root))
    busy = _panel_run(root, "run-20260103-000000")
    with pytest.raises(ValueError, match="using"):
        model_list.delete_model(model_list.read_card(busy, root), busy=[busy.parent.parent])
    assert loose.is_file() and elsewhere.is_file() and deep.is_file() and running.is_file() and busy.is_file()


def test_a_half_deleted_run_is_not_listed(tmp_path):
    model = _panel_run(tmp_path, "run-20260101-000000")
    os.rename(model.parent.parent, tmp_path / ".deleting-run-20260101-000000-1-2")
    assert model_list.list_models(tmp_path) == []


def test_continue_starts_from_the_picked_model_and_refuses_another_presets(tmp_path):
    picked = _panel_run(tmp_path, "run-20260101-000000", "acdc")
    _panel_run(tmp_path, "run-20260102-000000", "acdc")  # newer: "last model" would take this one
    settings = job_options.PanelSettings(preset="acdc", output_root=str(tmp_path), continue_training=True,
                                         warm_start_model=str(picked))
    plan = job_options.plan_run(settings)
    assert (plan.mode, plan.model, plan.resume) == ("continue", str(picked), False)
    before = _tree(tmp_path)
    la = _panel_run(tmp_path / "other", "run-20260101-000000", "la")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="trained for the LA preset, not ACDC"):
        job_options.plan_run(job_options.PanelSettings(preset="acdc", output_root=str(tmp_path), continue_training=True,
                                                       warm_start_model=str(la)))
    with pytest.raises(ValueError, match="does not exist"):
        job_options.plan_run(job_options.PanelSettings(preset="acdc", output_root=str(tmp_path), continue_training=True,
                                                       warm_start_model=str(tmp_path / "gone.pt")))
    assert _tree(tmp_path) == before
