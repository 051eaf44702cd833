"""Issue 13: nothing a user has is lost or silently corrupted (run folders, inputs, predictions, errors).

One test (or a few) per numbered defect of the issue, through the real CLI (in-process, so that a
traceback escaping ``main`` fails the test) and, where processes matter, real subprocesses.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ACTIONPlusPlusLib.cli import main
from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.imageio import read_case
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset, write_generic_layout
from ACTIONPlusPlusLib.errors import DataError
from ACTIONPlusPlusLib.model_io import save_model
from ACTIONPlusPlusLib.models import build_network

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "base_channels=4", "--set", "local_window=16", "--set", "local_stride=8", "--set", "local_pool=4",
        "--set", "anco_queries=8", "--set", "anco_negatives=16", "--set", "saacl_anchors_per_class=8",
        "--set", "saacl_queue_size=128", "--set", "geometric_augmentation=false", "--set", "num_threads=1"]
SHORT = ["--pretrain-iterations", "2", "--finetune-iterations", "2", "--patch-size", "32,32", "--device", "cpu"]


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "acdc", "--data", str(data), "--out", str(out), "--labeled", "2", "--quiet",
            *SHORT, *TINY, *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_line_error(err: str) -> str:
    """The error line; fails on a traceback or on any other line (the data summary line aside)."""
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("generic data:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return write_generic_layout(cardiac_phantom_dataset(2, 2, num_test=2, seed=5, num_slices=3, size=(40, 40)),
                                root / "data")


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory) -> Path:
    """A finished tiny run, trained once under umask 022; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("runs") / "run"
    old = os.umask(0o022)
    try:
        assert main(_train_args(data, run)) == 0
    finally:
        os.umask(old)
    return run


def _copy_run(run: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(run, target)
    return target


# --- 1. a re-run without --resume keeps the old run; --overwrite moves it aside --------------------------


def test_rerun_without_resume_keeps_the_old_run_byte_identical(data, finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_train_args(data, run)) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(run) in line and "--resume" in line and "--overwrite" in line
    assert _snapshot(run) == before

    assert main(_train_args(data, run, "--overwrite")) == 0
    aside = [p for p in run.iterdir() if p.is_dir() and p.name.startswith("previous-")]
    assert len(aside) == 1 and _snapshot(aside[0]) == before  # moved, never deleted
    assert (run / "model.pt").is_file() and (run / "config.json").is_file()
    assert main(_train_args(data, run, "--resume", "--overwrite")) == 2


# --- 2. two trainings into one folder: one clear refusal; a stale lock is taken over ---------------------


def test_second_concurrent_run_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    long_run = _train_args(data, run)
    long_run[long_run.index("--finetune-iterations") + 1] = "100000"
    first = subprocess.Popen([sys.executable, "-m", "ACTIONPlusPlusLib", *long_run], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = run / ".actionpp.lock"
        # without a lock (old code) config.json appears instead: the wait ends either way
        while not lock.exists() and not (run / "config.json").exists() and first.poll() is None:
            time.sleep(0.1)
        assert lock.exists(), f"no lock file in {run} while a training runs there"
        assert json.loads(lock.read_text())["pid"] == first.pid
        capsys.readouterr()
        assert main(_train_args(data, run, "--overwrite")) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert "in use" in line and str(first.pid) in line
    finally:
        first.send_signal(signal.SIGTERM)  # saves a checkpoint and exits 130
        out, err = first.communicate(timeout=300)
    assert first.returncode == 130, err
    assert not (run / ".actionpp.lock").exists()
    assert (run / "checkpoint.pt").is_file()


def test_stale_lock_is_taken_over(data, finished_run, tmp_path):
    run = _copy_run(finished_run, tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (run / ".actionpp.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    orphan = run / ".checkpoint.pt.abc123.tmp"
    orphan.write_bytes(b"\0" * 1024)
    assert main(_train_args(data, run, "--resume")) == 0
    assert not orphan.exists()  # orphaned temp checkpoint removed at start
    assert not (run / ".actionpp.lock").exists()


# --- 3, 4. truncated and NaN inputs are refused naming the file ------------------------------------------


def test_truncated_nii_gz_is_refused(data, finished_run, tmp_path, capsys):
    image = sorted((data / "imagesTr").iterdir())[0]
    whole = gzip.decompress(image.read_bytes())
    cut = tmp_path / image.name
    cut.write_bytes(gzip.compress(whole)[: len(gzip.compress(whole)) * 3 // 4])
    with pytest.raises(DataError, match="truncated") as info:
        read_case(cut)
    assert str(cut) in str(info.value)
    # a complete gzip stream of a cut NIfTI (e.g. re-compressed after a failed copy) is caught too
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(whole[: len(whole) - 100]))
    with pytest.raises(DataError, match="truncated"):
        read_case(short)
    capsys.readouterr()
    assert main(["predict", "--model", str(finished_run / "model.pt"), "--input", str(cut), "--output",
                 str(tmp_path / "pred"), "--device", "cpu"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(cut) in line and "truncated" in line
    assert not list((tmp_path / "pred").iterdir())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf_are_refused_in_every_format(tmp_path, suffix, value):
    array = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32)
    array[1, 5, 5] = value
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), suffix != ".nii")
    with pytest.raises(DataError, match="NaN/Inf") as info:
        read_case(path)
    assert str(path) in str(info.value)


def test_nan_image_stops_training_before_it_starts(data, tmp_path, capsys):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    target = sorted((copy / "imagesTr").iterdir())[1]
    image = sitk.ReadImage(str(target), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    nan_image = sitk.GetImageFromArray(array)
    nan_image.CopyInformation(image)
    sitk.WriteImage(nan_image, str(target), True)
    capsys.readouterr()
    assert main(_train_args(copy, tmp_path / "run")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(target) in line and "NaN/Inf" in line
    assert not (tmp_path / "run" / "config.json").exists()


def test_all_background_label_among_labeled_is_a_warning():
    from ACTIONPlusPlusLib.data.validation import validate_training_cases

    cases = cardiac_phantom_dataset(3, 2, seed=1, num_slices=3, size=(32, 32))
    cases.labeled[1].label[:] = 0
    warnings = validate_training_cases(cases.labeled, cases.unlabeled, preset("acdc"))
    assert any("all-background" in w and repr(cases.labeled[1].id) in w for w in warnings), warnings


# --- 5. predictions never collide and never read our own outputs -----------------------------------------


def test_outputs_never_collide(finished_run, data, tmp_path, capsys):
    model = finished_run / "model.pt"
    source = sorted((data / "imagesTs").iterdir())[0]
    folder = tmp_path / "scans"
    folder.mkdir()
    image = sitk.ReadImage(str(source))
    sitk.WriteImage(image, str(folder / "scan.nii.gz"), True)
    sitk.WriteImage(image, str(folder / "scan.mha"), True)
    assert main(["predict", "--model", str(model), "--input", str(folder), "--output", str(folder),
                 "--device", "cpu"]) == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["scan.mha", "scan.nii.gz", "scan_seg.mha", "scan_seg.nii.gz"], names
    # a second predict into the same folder does not segment the first one's outputs
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(folder), "--output", str(folder),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == names
    assert len(capsys.readouterr().out.split()) == 2
    # one forced suffix for both: refused, naming both inputs, before anything is written
    out = tmp_path / "forced"
    assert main(["predict", "--model", str(model), "--input", str(folder), "--output", str(out),
                 "--suffix", ".nii.gz", "--device", "cpu"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "scan.mha" in line and "scan.nii.gz" in line
    assert not list(out.iterdir())


# --- 6. a rejected run leaves the folder's config.json alone ---------------------------------------------


def test_rejected_run_keeps_config_json(data, finished_run, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    before = _snapshot(run)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    assert main(_train_args(data, run, "--overwrite", "--init-model", str(bad))) == 2
    assert main(_train_args(data, run, "--resume", "--set", "lr=0.02")) == 2  # the method changed
    assert _snapshot(run) == before
    assert not [p for p in run.iterdir() if p.is_dir()]  # nothing moved aside for a rejected run
    capsys.readouterr()


def test_resume_on_other_data_is_refused(data, finished_run, tmp_path, capsys):
    import shutil

    run = _copy_run(finished_run, tmp_path / "run")
    before = _snapshot(run)
    other = tmp_path / "data"
    shutil.copytree(data, other)
    label = sorted((other / "labelsTr").iterdir())[0]
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
    changed = sitk.GetImageFromArray(np.where(array == 1, 0, array).astype(array.dtype))
    changed.CopyInformation(sitk.ReadImage(str(label)))
    sitk.WriteImage(changed, str(label), True)
    capsys.readouterr()
    assert main(_train_args(other, run, "--resume")) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "other data" in line and "checkpoint.pt" in line
    assert _snapshot(run) == before


# --- 7. a model of the other preset is refused by predict and evaluate -----------------------------------


def test_wrong_preset_model_is_refused(data, tmp_path, capsys):
    cfg = preset("la", base_channels=4, patch_size=[16, 16, 16])
    model = save_model(tmp_path / "la_model.pt", build_network(cfg), cfg)
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(data / "imagesTs"), "--output",
                 str(tmp_path / "pred"), "--preset", "acdc", "--device", "cpu"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(model) in line and "'la'" in line
    assert not list((tmp_path / "pred").iterdir())
    # evaluate: the labels hold classes the LA model does not have
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    line = _one_line_error(captured.err)
    assert str(model) in line and "2 classes" in line
    assert "DSC" not in captured.out
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--preset", "acdc",
                 "--device", "cpu"]) == 2
    capsys.readouterr()


# --- 8. every user error: one line, exit 2, no traceback -------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    (["--patch-size", "30,30"], "patch_size"),
    (["--set", "learning_rate=0.1"], "learning_rate"),
    (["--set", "lr=abc"], "lr='abc'"),
])
def test_configuration_errors_are_one_line(data, tmp_path, capsys, extra, expected):
    capsys.readouterr()
    assert main(_train_args(data, tmp_path / "run", *extra)) == 2
    assert expected in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "run" / "config.json").exists()


def test_unwritable_outputs_are_one_line(data, finished_run, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    model = str(finished_run / "model.pt")
    capsys.readouterr()
    # --output pointing at a file
    assert main(["predict", "--model", model, "--input", str(data / "imagesTs"), "--output", str(blocker)]) == 2
    assert str(blocker) in _one_line_error(capsys.readouterr().err)
    # output folders that cannot be created (below a file: unwritable even for root)
    assert main(_train_args(data, blocker / "run")) == 2
    assert str(blocker) in _one_line_error(capsys.readouterr().err)
    assert main(["predict", "--model", model, "--input", str(data / "imagesTs"), "--output", str(blocker / "o")]) == 2
    assert str(blocker) in _one_line_error(capsys.readouterr().err)
    # evaluate --json fails before computing anything
    assert main(["evaluate", "--model", model, "--data", str(data), "--json", str(blocker / "r.json"),
                 "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert str(blocker) in _one_line_error(captured.err) and "DSC" not in captured.out


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(data, finished_run, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        capsys.readouterr()
        assert main(["predict", "--model", str(finished_run / "model.pt"), "--input", str(data / "imagesTs"),
                     "--output", str(locked)]) == 2
        assert str(locked) in _one_line_error(capsys.readouterr().err)
        assert main(["evaluate", "--model", str(finished_run / "model.pt"), "--data", str(data), "--json",
                     str(locked / "r.json"), "--device", "cpu"]) == 2
        assert str(locked) in _one_line_error(capsys.readouterr().err)
    finally:
        locked.chmod(0o755)


def test_unexpected_error_is_logged_not_printed(data, tmp_path, capsys, monkeypatch):
    """A bug (simulated: an exception no check anticipates) gives one line naming the log file."""
    from ACTIONPlusPlusLib import data as data_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(data_module, "load_dataset", broken)
    capsys.readouterr()
    assert main(_train_args(data, tmp_path / "run")) == 1
    line = _one_line_error(capsys.readouterr().err)
    log = Path(line.rsplit(" in ", 1)[1])
    assert "ZeroDivisionError" in line and log.is_file()
    assert "Traceback" in log.read_text() and "a bug" in log.read_text()


# --- 9. a leftover stop file does not cancel the next run ------------------------------------------------


def test_stale_stop_file_does_not_cancel_a_new_run(data, tmp_path):
    from ACTIONPlusPlusLib.jobs import TrainingJob, stop_file_for, write_job

    overrides = dict(pretrain_warmup_iterations=1, pretrain_joint_iterations=1, finetune_iterations=1,
                     base_channels=4, patch_size=[32, 32], local_window=16, local_stride=8, local_pool=4,
                     anco_queries=8, anco_negatives=16, saacl_anchors_per_class=8, saacl_queue_size=128,
                     geometric_augmentation=False, num_threads=1)
    job = TrainingJob(mode="train", preset="acdc", output_dir=tmp_path / "run", dataset_dir=data,
                      overrides=overrides, device="cpu", predict_unlabeled=False)
    job_path = write_job(job, tmp_path / "job.json")
    stop = stop_file_for(job_path)
    stop.write_text("cancel requested\n")
    os.utime(stop, (time.time() - 3600, time.time() - 3600))  # from a cancel an hour ago
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "ACTIONPlusPlusLib", "worker", str(job_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["event"] == "done" and done.returncode == 0, (events[-1:], done.stderr[-2000:])
    assert not stop.exists()


# --- 10. the smaller ones --------------------------------------------------------------------------------


def test_nan_loss_does_not_promise_a_checkpoint(data, tmp_path, capsys):
    capsys.readouterr()
    code = main(["train", "--preset", "acdc", "--data", str(data), "--out", str(tmp_path / "run"), "--labeled", "2",
                 "--quiet", "--warmup-iterations", "2", "--joint-iterations", "0", "--finetune-iterations", "0",
                 "--patch-size", "32,32", "--device", "cpu", "--set", "lr=1e30", "--set", "log_every=1", *TINY])
    line = _one_line_error(capsys.readouterr().err)
    assert code == 3 and "NaN" in line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert "was kept" not in line and "nothing to resume" in line


def test_interrupt_before_training_does_not_suggest_resume(data, tmp_path, capsys, monkeypatch):
    from ACTIONPlusPlusLib import data as data_module

    def interrupted(*args, **kwargs):  # Ctrl-C while the data loads
        raise KeyboardInterrupt

    monkeypatch.setattr(data_module, "load_dataset", interrupted)
    capsys.readouterr()
    assert main(_train_args(data, tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "nothing was saved" in err


def test_files_follow_the_umask(finished_run):
    for name in ("model.pt", "checkpoint.pt", "checkpoint_pretrain.pt", "config.json"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o644, name


def test_checkpoint_and_model_record_the_dataset(finished_run):
    import torch

    state = torch.load(finished_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["dataset"]["labeled"] == 2 and len(state["dataset"]["digest"]) == 32
