"""job.json: round trip, and every missing or wrong field is a DataError that names it and the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ACTIONPlusPlusLib.errors import DataError
from ACTIONPlusPlusLib.jobs import TrainingJob, read_job, write_job


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "dataset").mkdir()
    (tmp_path / "predict").mkdir()
    (tmp_path / "predict" / "a.nrrd").write_bytes(b"x")
    (tmp_path / "model.pt").write_bytes(b"x")
    return tmp_path


def good_job(folder: Path, **changes) -> TrainingJob:
    job = TrainingJob(
        mode="train", preset="la", output_dir=folder / "run", dataset_dir=folder / "dataset",
        predict_dir=[folder / "predict" / "a.nrrd"], model=None, resume=False,
        overrides={"finetune_iterations": 3, "patch_size": [32, 32, 16]}, device="cpu", seed=7,
        write_confidence=True,
    )
    for key, value in changes.items():
        setattr(job, key, value)
    return job


def test_round_trip(folder):
    job = good_job(folder)
    path = write_job(job, folder / "job.json")
    assert read_job(path) == job
    data = json.loads(path.read_text())
    assert list(data)[0] == "version" and data["version"] == 1
    # a folder as predict_dir, continue mode with a model, relative paths resolved against the job file
    job2 = good_job(folder, mode="continue", model=folder / "model.pt", predict_dir=folder / "predict")
    back = read_job(write_job(job2, folder / "job2.json"))
    assert back == job2 and [p.name for p in back.predict_files()] == ["a.nrrd"]
    data = json.loads((folder / "job2.json").read_text())
    data.update(dataset_dir="dataset", output_dir="run", model="model.pt")
    (folder / "rel.json").write_text(json.dumps(data))
    rel = read_job(folder / "rel.json")
    assert rel.dataset_dir == folder / "dataset" and rel.model == folder / "model.pt"


def test_write_is_atomic_and_leaves_no_temp(folder):
    write_job(good_job(folder), folder / "job.json")
    write_job(good_job(folder, seed=8), folder / "job.json")
    assert read_job(folder / "job.json").seed == 8
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


FIELDS = ["version", "mode", "preset", "dataset_dir", "output_dir", "predict_dir", "model", "resume",
          "overrides", "device", "seed", "write_confidence", "predict_unlabeled"]


@pytest.mark.parametrize("field", FIELDS)
def test_missing_field_named(folder, field):
    data = good_job(folder).to_dict() | {"version": 1}
    del data[field]
    path = folder / "job.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"job file .*job.json: missing field '{field}'"):
        read_job(path)


BAD = [
    ("version", 2, "version"),
    ("version", "1", "integer"),
    ("mode", "fit", "one of train, predict, continue"),
    ("mode", 1, "string"),
    ("preset", "brain", "one of"),
    ("dataset_dir", 5, "folder path"),
    ("dataset_dir", "/no/such/folder", "does not exist"),
    ("output_dir", "", "empty"),
    ("output_dir", None, "folder path"),
    ("predict_dir", 3, "null, a folder path or a list"),
    ("predict_dir", ["/no/such.nrrd"], "item 0 names a file that does not exist"),
    ("predict_dir", [1], "item 0 must be a file path"),
    ("predict_dir", "/no/such/folder", "does not exist"),
    ("model", "/no/model.pt", "does not exist"),
    ("model", 3, "model file path"),
    ("resume", "yes", "true or false"),
    ("resume", True, "no checkpoint to resume from"),
    ("overrides", [], "object"),
    ("overrides", {"no_such_key": 1}, "unknown config key"),
    ("overrides", {"patch_size": [30, 30, 30]}, "divisible"),
    ("device", "tpu", "auto, cpu, cuda"),
    ("device", None, "string"),
    ("seed", 1.5, "integer"),
    ("seed", True, "integer"),
    ("write_confidence", 1, "true or false"),
    ("predict_unlabeled", None, "true or false"),
]


@pytest.mark.parametrize("field,value,message", BAD)
def test_wrong_field_named(folder, field, value, message):
    data = good_job(folder).to_dict()
    data[field] = value
    path = folder / "job.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        read_job(path)
    text = str(info.value)
    assert "job.json" in text and f"'{field}'" in text and message in text, text


def test_mode_requirements(folder):
    path = folder / "job.json"
    for changes, field in (
        (dict(mode="predict", model=None), "model"),
        (dict(mode="continue", model=None), "model"),
        (dict(mode="train", dataset_dir=None), "dataset_dir"),
        (dict(mode="predict", model=folder / "model.pt", dataset_dir=None, predict_dir=None), "predict_dir"),
    ):
        write_job(good_job(folder, **changes), path)
        with pytest.raises(DataError, match=f"'{field}'"):
            read_job(path)
    (folder / "run").mkdir()
    (folder / "run" / "checkpoint.pt").write_bytes(b"x")
    write_job(good_job(folder, resume=True), path)
    assert read_job(path).resume
    write_job(good_job(folder, mode="predict", model=folder / "model.pt", resume=True), path)
    with pytest.raises(DataError, match="'resume'"):
        read_job(path)


def test_unreadable_files(folder):
    with pytest.raises(DataError, match="does not exist"):
        read_job(folder / "absent.json")
    (folder / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        read_job(folder / "bad.json")
    (folder / "list.json").write_text("[]")
    with pytest.raises(DataError, match="JSON object"):
        read_job(folder / "list.json")
    data = good_job(folder).to_dict() | {"extra": 1}
    (folder / "extra.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown field 'extra'"):
        read_job(folder / "extra.json")
