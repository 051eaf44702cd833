"""The README's main job, ``make demo`` (= ``actionpp demo``), in its quick mode, as a user runs it.

One real subprocess run (about half a minute on two CPU cores); then its outputs are checked against
the phantoms regenerated here: the two printed Dice tables agree with the prediction files, the files
keep the phantoms' geometry, and the overlay shows image | truth | ACTION++ of the right slice.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ACTIONPlusPlusLib.config import preset
from ACTIONPlusPlusLib.demo import demo_dataset
from ACTIONPlusPlusLib.metrics import case_metrics, summarize

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TITLES = {"ACTION++": "ACTION++ on 4 held-out phantoms", "supervised-only": "supervised-only on 4 held-out phantoms"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo_output"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path the README promises, also on a GPU machine
    result = subprocess.run([sys.executable, "-m", "ACTIONPlusPlusLib", "demo", "--quick", "--out", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout, result.stderr, demo_dataset()


def _dsc_row(stdout: str, title: str) -> list[float]:
    """The DSC (%) row (RV, Myo, LV, Avg) of the table printed under ``title``."""
    block = stdout.split(title, 1)[1]
    line = next(line for line in block.splitlines() if line.startswith("DSC (%)"))
    return [float(v) for v in line.split()[2:]]


def test_demo_prints_both_tables_and_the_comparison(demo):
    out, stdout, stderr, data = demo
    assert "phantom data: 2 labeled, 10 unlabeled, 4 test volumes" in stderr
    for title in TITLES.values():
        assert title in stdout, stdout
        header = stdout.split(title, 1)[1].splitlines()[2].split()
        assert header == ["Metric", "RV", "Myo", "LV", "Avg"], header
        values = _dsc_row(stdout, title)
        assert len(values) == 4 and all(0.0 <= v <= 100.0 for v in values)
        assert values[3] == pytest.approx(sum(values[:3]) / 3, abs=0.01)  # Avg = mean over the classes
    ours, base = (float(v) for v in re.search(r"mean Dice: ACTION\+\+ ([\d.]+) vs supervised-only ([\d.]+)", stdout).groups())
    assert ours == pytest.approx(_dsc_row(stdout, TITLES["ACTION++"])[3], abs=0.051)
    assert base == pytest.approx(_dsc_row(stdout, TITLES["supervised-only"])[3], abs=0.051)
    assert f"predictions: {out / 'predictions'}" in stdout
    assert f"overlay (image | truth | ACTION++): {out / 'overlay.png'}" in stdout
    # both runs are complete run folders
    for mode in ("actionpp", "supervised"):
        assert (out / mode / "model.pt").is_file() and (out / mode / "config.json").is_file()


def test_demo_prediction_files_match_the_printed_table(demo):
    out, stdout, _, data = demo
    names = preset("acdc").class_names
    files = sorted((out / "predictions").iterdir())
    assert [f.name for f in files] == sorted(f"{case.id}_seg.nii.gz" for case in data.test)
    per_case, foreground = [], 0
    for case in data.test:
        image = sitk.ReadImage(str(out / "predictions" / f"{case.id}_seg.nii.gz"))
        labels = sitk.GetArrayFromImage(image)
        assert labels.shape == case.label.shape and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        if case.spacing is not None:
            assert np.allclose(image.GetSpacing(), case.spacing)
        if case.origin is not None:
            assert np.allclose(image.GetOrigin(), case.origin)
        if case.direction is not None:
            assert np.allclose(image.GetDirection(), np.ravel(case.direction))
        foreground += int((labels > 0).sum())
        per_case.append(case_metrics(labels, case.label, 4, class_names=names, spacing=case.spacing))
    assert foreground > 0, "ACTION++ predicted background everywhere"
    summary = summarize(per_case, names)
    printed = _dsc_row(stdout, TITLES["ACTION++"])
    recomputed = [100 * summary["per_class"][n]["dice"] for n in names[1:]] + [100 * summary["mean"]["dice"]]
    assert recomputed == pytest.approx(printed, abs=0.006), (recomputed, printed)


def test_demo_overlay_shows_image_truth_and_prediction(demo):
    out, _, _, data = demo
    overlay = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "overlay.png")))
    case = data.test[0]
    h, w = case.image.shape[1:]
    assert overlay.shape == (2 * h, 3 * 2 * w, 3) and overlay.dtype == np.uint8
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions" / f"{case.id}_seg.nii.gz")))
    z = int(np.argmax((case.label > 0).reshape(case.label.shape[0], -1).sum(1)))  # the slice with most heart
    left, middle, right = (overlay[:, i * 2 * w:(i + 1) * 2 * w] for i in range(3))

    def coloured(panel):  # blended label colours are the only non-grey pixels
        return ~((panel[..., 0] == panel[..., 1]) & (panel[..., 1] == panel[..., 2]))

    def upscaled(mask):
        return np.kron(mask, np.ones((2, 2), dtype=bool))

    assert not coloured(left).any()
    expected_grey = np.kron(np.floor(np.clip(case.image[z], 0, 1).astype(np.float32) * 255), np.ones((2, 2)))
    assert np.abs(left[..., 0].astype(float) - expected_grey).max() <= 1.0
    assert np.array_equal(coloured(middle), upscaled(case.label[z] > 0))
    assert np.array_equal(coloured(right), upscaled(prediction[z] > 0))
    # outside the labels the three panels show the same image
    outside = ~upscaled((case.label[z] > 0) | (prediction[z] > 0))
    assert np.array_equal(middle[outside], left[outside]) and np.array_equal(right[outside], left[outside])
