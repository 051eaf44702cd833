"""The actionpp CLI end to end on a generic NIfTI layout: train, predict, evaluate (numbers = medpy)."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from medpy.metric import binary

from ACTIONPlusPlusLib.cli import main
from ACTIONPlusPlusLib.data.imageio import read_case
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_dataset, write_generic_layout

TINY = ["--set", "base_channels=4", "--set", "local_window=16", "--set", "local_stride=8", "--set", "local_pool=4",
        "--set", "anco_queries=8", "--set", "anco_negatives=16", "--set", "saacl_anchors_per_class=8",
        "--set", "saacl_queue_size=128", "--set", "geometric_augmentation=false"]


def test_train_predict_evaluate(tmp_path, capsys):
    data = write_generic_layout(cardiac_phantom_dataset(2, 2, num_test=2, seed=5, num_slices=3, size=(40, 40)), tmp_path / "data")
    run = tmp_path / "run"
    code = main(["train", "--preset", "acdc", "--data", str(data), "--out", str(run), "--labeled", "2", "--quiet",
                 "--pretrain-iterations", "2", "--finetune-iterations", "2", "--patch-size", "32,32", "--device", "cpu", *TINY])
    assert code == 0
    assert json.loads((run / "config.json").read_text())["base_channels"] == 4
    assert (run / "model.pt").is_file()
    capsys.readouterr()
    assert main(["info", "--model", str(run / "model.pt")]) == 0  # the model carries its card
    card = json.loads(capsys.readouterr().out)
    assert card["preset"] == "acdc" and card["classes"] == ["RV", "Myo", "LV"] and card["mode"] == "actionpp"
    assert (card["labeled_cases"], card["unlabeled_cases"], card["device"]) == (2, 2, "cpu")
    assert card["iterations"] == 4 and card["saved_at"][:2] == "20"

    out = tmp_path / "pred"
    assert main(["predict", "--model", str(run / "model.pt"), "--input", str(data / "imagesTs"), "--output", str(out),
                 "--confidence", "--device", "cpu"]) == 0
    image = data / "imagesTs" / sorted(p.name for p in (data / "imagesTs").iterdir())[0]
    pred = sitk.ReadImage(str(out / image.name.replace(".nii.gz", "_seg.nii.gz")))
    ref = sitk.ReadImage(str(image))
    assert pred.GetSize() == ref.GetSize() and pred.GetSpacing() == ref.GetSpacing()
    assert pred.GetDirection() == ref.GetDirection() and pred.GetOrigin() == ref.GetOrigin()
    assert (out / image.name.replace(".nii.gz", "_confidence.nii.gz")).is_file()

    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(run / "model.pt"), "--data", str(data), "--split", "test",
                 "--json", str(report), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "DSC (%)" in table and "RV" in table and "LV" in table
    results = json.loads(report.read_text())
    assert len(results["cases"]) == 2
    # evaluate's numbers agree with medpy computed directly on the same arrays (predict's output)
    for entry in results["cases"]:
        name = entry["case"]
        gt = read_case(data / "labelsTs" / f"{name}.nii.gz").image.astype(np.uint8)
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}_seg.nii.gz")))
        for value, cls in ((1, "RV"), (2, "Myo"), (3, "LV")):
            p, g = seg == value, gt == value
            expected = binary.dc(p, g) if p.any() and g.any() else 0.0
            assert entry["metrics"][cls]["dice"] == np.float64(expected) or abs(entry["metrics"][cls]["dice"] - expected) < 1e-9


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--preset", "la", "--data", str(empty), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "missing.pt"), "--input", str(empty), "--output", str(tmp_path / "o")]) == 2
