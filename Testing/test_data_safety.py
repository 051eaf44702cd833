"""Issue 35: nothing lost or silently corrupted: damaged model files and checkpoints, option values,
predictions that would replace a user's file.  Each test failed on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ACTIONPlusPlusLib.cli import main
from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.data.imageio import write_image, write_label
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_case
from ACTIONPlusPlusLib.errors import ModelFileError
from ACTIONPlusPlusLib.model_io import MODEL_FORMAT, load_model, save_model
from ACTIONPlusPlusLib.models import build_network

TINY_CFG = dict(base_channels=4, patch_size=[32, 32])


def _model_file(path: Path, seed: int = 0) -> Path:
    cfg = preset("acdc", **TINY_CFG)
    torch.manual_seed(seed)
    return save_model(path, build_network(cfg).eval(), cfg)


def _flip_inside_a_weight(path: Path, value: float | None = None) -> str:
    """Overwrite 4 bytes inside one weight tensor of the zip archive (its data is stored raw), as a bad
    disk or copy would: ``value`` (e.g. NaN) as float32, else the bytes bit-flipped.  Returns the
    tensor's name."""
    data = torch.load(path, weights_only=True)
    state = data["state_dict"] if "state_dict" in data else data["student"]
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() >= 64 and v.abs().sum() > 0)
    raw = bytearray(path.read_bytes())
    needle = state[name].contiguous().numpy().tobytes()[:64]
    at = raw.find(needle)
    assert at > 0 and raw.find(needle, at + 1) < 0
    if value is None:
        raw[at + 8 : at + 12] = bytes(b ^ 0x10 for b in raw[at + 8 : at + 12])
    else:
        raw[at + 8 : at + 12] = np.float32(value).tobytes()
    path.write_bytes(bytes(raw))
    return name


# --- 1. model files and checkpoints carry a checksum --------------------------------------------------


def test_bit_flipped_model_is_refused_naming_the_file(tmp_path):
    path = _model_file(tmp_path / "model.pt")
    load_model(path)  # intact: loads
    _flip_inside_a_weight(path)  # finite values, only the checksum can tell
    with pytest.raises(ModelFileError, match="model.pt is damaged") as info:
        load_model(path)
    assert "checksum" in str(info.value)


def test_nan_weight_is_refused_also_in_old_files_without_checksum(tmp_path):
    cfg = preset("acdc", **TINY_CFG)
    state = build_network(cfg).state_dict()
    old = {"format": MODEL_FORMAT, "version": 1, "config": cfg.to_dict(), "state_dict": state,
           "class_names": cfg.class_names, "meta": {}}  # what earlier versions wrote: no checksum
    torch.save(old, tmp_path / "old.pt")
    load_model(tmp_path / "old.pt")  # old files still load
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[3] = float("nan")
    torch.save(old, tmp_path / "old_nan.pt")
    with pytest.raises(ModelFileError, match="old_nan.pt") as info:
        load_model(tmp_path / "old_nan.pt")
    assert "NaN" in str(info.value) and name in str(info.value)


def test_damaged_checkpoint_is_refused(tmp_path):
    from ACTIONPlusPlusLib.training.checkpoint import load_checkpoint, save_checkpoint

    cfg = preset("acdc", **TINY_CFG)
    net = build_network(cfg)
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"config": cfg.to_dict(), "student": net.state_dict(),
                                                        "teacher": net.state_dict(), "iteration": 3})
    assert load_checkpoint(path)["iteration"] == 3
    _flip_inside_a_weight(path)
    with pytest.raises(ModelFileError, match="checkpoint.pt is damaged"):
        load_checkpoint(path)
    with pytest.raises(ModelFileError, match="checkpoint.pt is damaged"):  # predicting from it too
        load_model(path)


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    rng = np.random.default_rng(3)
    for name in ("c1", "c2"):
        case = cardiac_phantom_case(rng, name, num_slices=2, size=(32, 32))
        write_image(folder / f"{name}.nii.gz", case.image, case)
    return folder


def test_cli_predict_with_a_damaged_model_exits_2_naming_it(tmp_path, images, capsys):
    path = _model_file(tmp_path / "model.pt")
    _flip_inside_a_weight(path, float("nan"))
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(path), "--input", str(images), "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err and "damaged" in err
    assert not list(out.glob("*_seg*"))


def test_worker_predict_with_a_damaged_model_exits_2(tmp_path, images):
    from ACTIONPlusPlusLib import worker
    from ACTIONPlusPlusLib.jobs import TrainingJob, write_job

    path = _model_file(tmp_path / "model.pt")
    _flip_inside_a_weight(path)
    job = write_job(TrainingJob(mode="predict", preset="acdc", output_dir=tmp_path / "run", predict_dir=images,
                                model=path, device="cpu"), tmp_path / "job.json")
    events: list[dict] = []
    with pytest.raises(ModelFileError, match="model.pt is damaged"):
        worker.run(job, events.append, worker.StopFlag(None))
    assert worker._exit_code_for(ModelFileError("x")) == 2
    assert not (tmp_path / "run" / "predictions").exists() or not list((tmp_path / "run" / "predictions").iterdir())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset, write_generic_layout

    return write_generic_layout(cardiac_phantom_dataset(2, 2, seed=5, num_slices=2, size=(32, 32)),
                                tmp_path_factory.mktemp("data") / "data")


TINY = ["--set", "base_channels=4", "--set", "local_window=16", "--set", "local_stride=8", "--set", "local_pool=4",
        "--set", "anco_queries=8", "--set", "anco_negatives=16", "--set", "saacl_anchors_per_class=8",
        "--set", "saacl_queue_size=128", "--pretrain-iterations", "2", "--finetune-iterations", "2",
        "--patch-size", "32,32", "--device", "cpu", "--quiet"]


def _old_run(folder: Path) -> dict[str, bytes]:
    """A folder holding an earlier run (its model.pt and config.json); returns its files' bytes."""
    _model_file(folder / "model.pt", seed=9)
    (folder / "config.json").write_text(json.dumps({"old": True}))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _overwrite_from(init, out, data, capsys) -> tuple[int, str]:
    """``train --init-model INIT --overwrite`` into ``out`` (which holds a run): exit code and stderr."""
    code = main(["train", "--preset", "acdc", "--data", str(data), "--out", str(out), "--labeled", "2",
                 "--init-model", str(init), "--overwrite", *TINY])
    return code, capsys.readouterr().err


def test_damaged_init_model_exits_2_and_leaves_the_old_run_in_place(tmp_path, data, capsys):
    init = _model_file(tmp_path / "init.pt")
    _flip_inside_a_weight(init, float("inf"))
    out = tmp_path / "run"
    before = _old_run(out)
    code, err = _overwrite_from(init, out, data, capsys)
    assert code == 2, err
    assert str(init) in err and "damaged" in err and "learning rate" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing moved aside


# --- 2. every option value checked before any folder is touched ------------------------------------------


BAD_OPTIONS = [
    (["--patch-size", "0,0"], "patch_size=0,0"),
    (["--patch-size", "40,40"], "patch_size"),
    (["--batch-size", "2,0"], "pretrain_unlabeled_batch=0"),
    (["--set", "checkpoint_every=0"], "checkpoint_every=0"),
    (["--set", "lr=-1"], "lr=-1.0"),
    (["--set", "lr=inf"], "lr=inf"),
    (["--set", "lambda_a=nan"], "lambda_a=nan"),
    (["--set", "ema_decay=5"], "ema_decay=5.0"),
    (["--set", "log_every=0"], "log_every=0"),
    (["--set", "pseudo_threshold=1.5"], "pseudo_threshold=1.5"),
]


@pytest.mark.parametrize("extra, expected", BAD_OPTIONS)
def test_bad_option_values_exit_2_before_any_file_is_written(tmp_path, data, capsys, extra, expected):
    out = tmp_path / "run"
    code = main(["train", "--preset", "acdc", "--data", str(data), "--out", str(out), "--labeled", "2", *TINY, *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize("extra, expected", BAD_OPTIONS[3:5])
def test_overwrite_with_a_bad_value_leaves_the_old_run_in_place(tmp_path, data, capsys, extra, expected):
    out = tmp_path / "run"
    before = _old_run(out)
    code = main(["train", "--preset", "acdc", "--data", str(data), "--out", str(out), "--labeled", "2", "--overwrite",
                 *TINY, *extra])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_worker_job_with_a_bad_value_is_refused_before_training(tmp_path, data):
    from ACTIONPlusPlusLib import worker
    from ACTIONPlusPlusLib.errors import DataError
    from ACTIONPlusPlusLib.jobs import TrainingJob, write_job

    for overrides, expected in [({"ema_decay": 5}, "ema_decay=5"), ({"finetune_unlabeled_batch": 0}, "finetune_unlabeled_batch=0"),
                                ({"patch_size": 32}, "patch_size"), ({"lr": "nan"}, "lr=nan")]:
        out = tmp_path / f"run{len(expected)}"
        job = write_job(TrainingJob(mode="train", preset="acdc", output_dir=out, dataset_dir=data,
                                    overrides=overrides, device="cpu"), tmp_path / "job.json")
        with pytest.raises(DataError, match=expected):
            worker.run(job, [].append, worker.StopFlag(None))
        assert not out.exists()


def test_config_problems_names_each_bad_value():
    from ACTIONPlusPlusLib.config_checks import config_problems

    assert config_problems(preset("acdc")) == [] and config_problems(preset("la")) == []
    assert config_problems(preset("acdc", num_threads=1, log_every=1, checkpoint_every=2, patch_size=[32, 32])) == []
    bad = preset("la").replace(ema_decay=0.5)
    bad.ema_decay, bad.patch_size, bad.seed = 1.0, [112, 112, 0], "x"
    problems = config_problems(bad)
    assert any(p.startswith("ema_decay=1.0") for p in problems) and any(p.startswith("seed='x'") for p in problems)
    assert any("patch_size=112,112,0" in p for p in problems)


# --- 3. predictions never replace a file ACTION++ did not write -------------------------------------------


def test_predict_keeps_a_users_seg_file_unless_overwrite(tmp_path, images, capsys):
    from ACTIONPlusPlusLib.data.imageio import is_prediction_file, read_case

    model = _model_file(tmp_path / "model.pt")
    out = tmp_path / "pred"
    out.mkdir()
    manual = out / "c2_seg.nii.gz"
    case = read_case(images / "c2.nii.gz")
    write_label(manual, (case.image > case.image.mean()).astype(np.uint8), case)  # the user's own work
    before = manual.read_bytes()
    args = ["predict", "--model", str(model), "--input", str(images), "--output", str(out), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(manual) in err and "--overwrite" in err
    assert manual.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["c2_seg.nii.gz"]  # refused before anything was written
    assert main(args + ["--overwrite"]) == 0
    assert is_prediction_file(manual) and is_prediction_file(out / "c1_seg.nii.gz")
    capsys.readouterr()
    assert main(args) == 0  # our own earlier predictions are replaced without asking


def test_worker_keeps_a_users_file_in_the_predictions_folder(tmp_path, images):
    from ACTIONPlusPlusLib import worker
    from ACTIONPlusPlusLib.errors import DataError
    from ACTIONPlusPlusLib.jobs import TrainingJob, write_job

    model = _model_file(tmp_path / "model.pt")
    foreign = tmp_path / "run" / "predictions" / "c1.nii.gz"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    job = write_job(TrainingJob(mode="predict", preset="acdc", output_dir=tmp_path / "run", predict_dir=images,
                                model=model, device="cpu"), tmp_path / "job.json")
    with pytest.raises(DataError, match="c1.nii.gz exists and was not written by ACTION"):
        worker.run(job, [].append, worker.StopFlag(None))
    assert foreign.read_bytes() == b"not ours" and len(list(foreign.parent.iterdir())) == 1


# --- 5. memory, signals, summaries ---------------------------------------------------------------------


def test_over_large_patch_is_refused_with_the_estimate_before_allocation(tmp_path, data, capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "acdc", "--data", str(data), "--out", str(out), "--labeled", "2", *TINY,
                 "--patch-size", "16384,16384", "--batch-size", "4,4"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "patch_size 16384,16384" in err and "GB" in err and "--batch-size" in err
    assert not out.exists()


def test_memory_estimate_against_the_device(monkeypatch):
    from ACTIONPlusPlusLib import memory_check
    from ACTIONPlusPlusLib.errors import DataError

    la = preset("la")
    per_image = memory_check.activation_bytes_per_image(la)
    assert per_image is not None and per_image > 100 * 2**20  # V-Net at 112x112x80: hundreds of MB an image
    assert memory_check.check_training_memory(preset("acdc"), "cpu") is not None  # the paper's settings fit here
    monkeypatch.setattr(memory_check, "device_memory", lambda device: (2**30, "a 1 GB test device"))
    with pytest.raises(DataError, match=r"needs at least \d+\.\d GB .* a 1 GB test device has 1\.0 GB") as info:
        memory_check.check_training_memory(la, "cpu")
    suggested = str(info.value).split("e.g. ")[1].split(")")[0]
    assert all(int(v) % 16 == 0 and int(v) < p for v, p in zip(suggested.split(","), la.patch_size))


def test_parent_watch_fires_when_the_watched_process_dies():
    import subprocess
    import sys
    import threading

    from ACTIONPlusPlusLib.worker import ParentWatch

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = threading.Event()
    watch = ParentWatch(child.pid, gone.set, interval=0.05)
    assert not watch.direct and not watch.gone()
    watch.start()
    assert not gone.wait(0.3)
    child.kill()
    child.wait()
    assert gone.wait(5)


def test_worker_whose_parent_is_killed_stops_with_a_checkpoint(tmp_path, data):
    """The worker's parent (Slicer) dies mid-training: the worker saves a checkpoint and stops (exit 4)
    instead of training on unseen (was: ran on until its budget ended or its next write failed)."""
    import os
    import subprocess
    import sys
    import time

    import psutil

    from ACTIONPlusPlusLib.jobs import TrainingJob, write_job

    overrides = dict(base_channels=4, patch_size=[32, 32], local_window=16, local_stride=8, local_pool=4,
                     anco_queries=8, anco_negatives=16, saacl_anchors_per_class=8, saacl_queue_size=128,
                     pretrain_warmup_iterations=2, pretrain_joint_iterations=2, finetune_iterations=100000,
                     log_every=1, checkpoint_every=100000, num_threads=1)
    run = tmp_path / "run"
    job = write_job(TrainingJob(mode="train", preset="acdc", output_dir=run, dataset_dir=data, overrides=overrides,
                                device="cpu", predict_unlabeled=False), tmp_path / "job.json")
    events = tmp_path / "events.jsonl"
    parent_code = (
        "import os, subprocess, sys\n"
        "env = {k: v for k, v in os.environ.items() if k != 'ACTIONPP_PARENT_PID'}\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'ACTIONPlusPlusLib', 'worker', {str(job)!r}],\n"
        f"                     stdout=open({str(events)!r}, 'w'), stderr=subprocess.DEVNULL, env=env)\n"
        "print(p.pid, flush=True)\n"
        "p.wait()\n")
    repo = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, cwd=repo,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    worker_pid = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            text = events.read_text() if events.exists() else ""
            if '"event":"progress"' in text and '"stage":"finetune"' in text:
                break
            assert parent.poll() is None, text
            time.sleep(0.2)
        else:
            pytest.fail("the worker never reached fine-tuning")
        parent.kill()
        parent.wait()
        psutil.Process(worker_pid).wait(timeout=60)
    finally:
        if psutil.pid_exists(worker_pid):
            psutil.Process(worker_pid).kill()
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    last = lines[-1]
    assert last["event"] == "cancelled" and last["resumable"] is True, last
    assert "parent process gone" in last["message"]
    assert (run / "checkpoint.pt").is_file()


def test_predict_goes_on_past_a_damaged_input_and_ends_with_a_summary(tmp_path, images, capsys):
    model = _model_file(tmp_path / "model.pt")
    whole = (images / "c2.nii.gz").read_bytes()
    (images / "c1b.nii.gz").write_bytes(whole[: len(whole) // 2])  # sorted between c1 and c2
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(model), "--input", str(images), "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert sorted(p.name for p in out.iterdir()) == ["c1_seg.nii.gz", "c2_seg.nii.gz"]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {images / 'c1b.nii.gz'}: is truncated"), err
    assert lines[1] == f"2 of 3 image(s) segmented into {out}; not segmented: c1b.nii.gz (errors above)"


_PREDICT_AND_SIGNAL = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job inherits it ignored)
from ACTIONPlusPlusLib import cli, inference
real = inference.predict_case
calls = []
def predict_then_signal(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # while the second image is segmented
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return real(*args, **kwargs)
inference.predict_case = predict_then_signal
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_during_predict_exits_130_and_says_what_was_written(tmp_path, images, signame):
    import subprocess
    import sys

    model = _model_file(tmp_path / "model.pt")
    out = tmp_path / "pred"
    result = subprocess.run([sys.executable, "-c", _PREDICT_AND_SIGNAL, signame, "predict", "--model", str(model),
                             "--input", str(images), "--output", str(out), "--device", "cpu"],
                            capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 130, result.stderr[-2000:]
    assert f"interrupted: 1 of 2 segmentation(s) were written to {out} (the last: c1_seg.nii.gz)" in result.stderr
    assert "nothing was saved" not in result.stderr and "Traceback" not in result.stderr


_TRAIN_AND_SIGNAL = """
import os, signal, sys
from ACTIONPlusPlusLib import cli, data
def load_then_signal(*args, **kwargs):  # SIGTERM while the data loads, before training's own handler
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("the signal did not interrupt")
data.load_dataset = load_then_signal
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_during_start_up_exits_130(tmp_path, data):
    import subprocess
    import sys

    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", _TRAIN_AND_SIGNAL, "train", "--preset", "acdc", "--data", str(data),
                             "--out", str(out), *TINY], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 130, result.stderr[-2000:]
    assert "interrupted before training started; nothing was saved" in result.stderr


def test_full_disk_during_a_checkpoint_write_is_named_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno
    import shutil

    from ACTIONPlusPlusLib import io_utils
    from ACTIONPlusPlusLib.training.checkpoint import load_checkpoint, save_checkpoint

    cfg = preset("acdc", **TINY_CFG)
    net = build_network(cfg)
    state = {"config": cfg.to_dict(), "student": net.state_dict(), "teacher": net.state_dict(), "iteration": 1}
    path = save_checkpoint(tmp_path / "checkpoint.pt", state)
    before = path.read_bytes()
    real_save = torch.save

    def full_disk_save(obj, target):  # what torch.save raises when the disk fills up mid-write
        real_save(obj, target)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/7: file write failed")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(OSError) as info:
        save_checkpoint(path, {**state, "iteration": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert "No space left" in info.value.strerror and "previous checkpoint.pt is unchanged" in info.value.strerror
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1

    def enospc(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    with pytest.raises(OSError, match="config.json could not be written") as info:
        io_utils.atomic_write(tmp_path / "config.json", enospc)
    assert info.value.filename == str(tmp_path / "config.json")  # the file, not the temporary name


def test_init_model_for_another_network_is_refused_before_overwrite_moves_the_run(tmp_path, data, capsys):
    cfg = preset("acdc", base_channels=8, patch_size=[32, 32])  # the run below builds base_channels=4
    init = save_model(tmp_path / "init8.pt", build_network(cfg), cfg)
    out = tmp_path / "run"
    before = _old_run(out)
    code, err = _overwrite_from(init, out, data, capsys)
    assert code == 2, err
    assert "cannot warm-start from" in err and str(init) in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_worker_out_of_memory_advice_names_the_settings_to_change():
    from ACTIONPlusPlusLib.worker import _message_for

    text = _message_for(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert text.startswith("out of memory: CUDA out of memory.")
    assert "patch_size" in text and "finetune_labeled_batch" in text and "--set KEY=VALUE" in text
