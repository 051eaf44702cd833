"""The headless batch script under plain Python + slicer-core: files in, .seg.nrrd out, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core==5.11.0.6)")
import slicer.util  # noqa: E402

from ACTIONPlusPlusLib.data.imageio import write_image, write_label  # noqa: E402
from ACTIONPlusPlusLib.data.phantoms import cardiac_phantom_case  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge import terminology  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.geometry import same_grid  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.node_files import load_segmentation_file, load_volume_file, save_node  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.segmentations import preset_color_table  # noqa: E402
from ACTIONPlusPlusLib.slicer_bridge.volumes import case_from_volume_node, volume_node_from_case  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "ACTIONPlusPlus" / "ACTIONPlusPlusBatch.py"
TINY_SET = [
    "base_channels=4", "patch_size=32,32", "log_every=1", "checkpoint_every=2", "latent_dim=32",
    "representation_dim=16", "local_window=16", "local_stride=16", "local_pool=4", "saacl_queue_size=64",
    "anco_queries=16", "anco_negatives=32", "saacl_anchors_per_class=16", "pretrain_labeled_batch=2",
    "pretrain_unlabeled_batch=2", "finetune_labeled_batch=2", "finetune_unlabeled_batch=2", "num_threads=1",
]
LEFT_HANDED = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # x and y swapped: det -1


def run_batch(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds the Lib itself
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_in")
    rng = np.random.default_rng(1)
    cases = {}
    for name in ("a", "b", "u", "p"):
        case = cardiac_phantom_case(rng, name, num_slices=3, size=(48, 48))
        case.direction, case.spacing, case.origin = LEFT_HANDED, (1.3, 1.5, 8.0), (5.0, 6.0, -7.0)
        cases[name] = case
    write_image(root / "a.nrrd", cases["a"].image, cases["a"])
    write_image(root / "b.nii.gz", cases["b"].image, cases["b"])
    write_label(root / "b_label.nii.gz", cases["b"].label, cases["b"])
    write_image(root / "u.nrrd", cases["u"].image, cases["u"])
    write_image(root / "p.nii.gz", cases["p"].image, cases["p"])
    # a.seg.nrrd: a real Slicer segmentation with synonyms as names, made through MRML
    scene = slicer.vtkMRMLScene()
    volume = load_volume_file(scene, root / "a.nrrd")
    labels = cases["a"].label
    case_mrml = case_from_volume_node(volume)
    # Slicer's reader may flip a left-handed file: put the label through the same geometry
    import SimpleITK as sitk

    ref = sitk.ReadImage(str(root / "a.nrrd"))
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(ref)
    target = sitk.Image(case_mrml.image.shape[::-1], sitk.sitkUInt8)
    target.SetSpacing(case_mrml.spacing), target.SetOrigin(case_mrml.origin), target.SetDirection(case_mrml.direction)
    on_grid = sitk.GetArrayFromImage(sitk.Resample(lab_img, target, sitk.Transform(), sitk.sitkNearestNeighbor))
    lm = volume_node_from_case(scene, case_mrml, "lm", labelmap=True, array=on_grid)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "a seg")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg)
    names = {1: "right ventricle", 2: "LV Myocardium", 3: "lv blood pool"}
    for i in range(seg.GetSegmentation().GetNumberOfSegments()):
        segment = seg.GetSegmentation().GetNthSegment(i)
        segment.SetName(names[segment.GetLabelValue()])
    save_node(seg, root / "a.seg.nrrd")
    return root


def test_batch_trains_predicts_and_saves_segmentations(inputs, tmp_path):
    out = tmp_path / "out"
    args = ["--preset", "acdc", "--labeled", f"{inputs / 'a.nrrd'}:{inputs / 'a.seg.nrrd'}",
            "--labeled", f"{inputs / 'b.nii.gz'}:{inputs / 'b_label.nii.gz'}", "--unlabeled", inputs / "u.nrrd",
            "--predict", inputs / "p.nii.gz", "--out", out, "--iterations", "2,2,3", "--device", "cpu",
            "--confidence"]
    for item in TINY_SET:
        args += ["--set", item]
    result = run_batch("--", *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "overall 7/7" in result.stdout and "finished: 2 segmentation(s)" in result.stdout
    produced = sorted(p.name for p in out.glob("*.seg.nrrd"))
    assert produced == ["p ACTION++.seg.nrrd", "u ACTION++.seg.nrrd"]
    assert (out / "u ACTION++ confidence.nrrd").is_file()
    # reload: names, colours, terminology; geometry consistent with the input image
    scene = slicer.vtkMRMLScene()
    volume = load_volume_file(scene, inputs / "u.nrrd")
    seg = load_segmentation_file(scene, out / "u ACTION++.seg.nrrd")
    segmentation = seg.GetSegmentation()
    for info in terminology.classes("acdc"):
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(info.name))
        assert segment is not None and segment.GetTerminology() == info.terminology_entry
        assert np.allclose(segment.GetColor(), np.array(info.rgb) / 255.0, atol=1e-6)
    scratch = slicer.vtkMRMLScene()
    exported = scratch.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        seg, ids, exported, volume, 0, preset_color_table(scratch, "acdc"))
    saved = slicer.util.arrayFromVolume(exported)
    # the worker's own prediction file, brought onto the same volume through geometry
    prediction = out / "job" / "run" / "predictions" / "u.nrrd"
    pred_node = load_volume_file(scene, prediction, labelmap=True)
    assert same_grid(pred_node, volume)
    assert np.array_equal(saved, slicer.util.arrayFromVolume(pred_node))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "acdc", "--out", "{tmp}"], "no --labeled"),
        (["--preset", "acdc", "--labeled", "nope.nrrd:nope.seg.nrrd", "--out", "{tmp}"], "not found"),
        (["--preset", "acdc", "--labeled", "{in}/a.nrrd", "--out", "{tmp}"], "IMAGE:LABEL"),
        (["--preset", "la", "--labeled", "{in}/a.nrrd:{in}/a.seg.nrrd", "--out", "{tmp}"], "none of the LA"),
        (["--preset", "acdc", "--labeled", "{in}/a.nrrd:{in}/a.seg.nrrd", "--unlabeled", "{in}/a.nrrd", "--out", "{tmp}"],
         "both labeled and unlabeled"),
        (["--preset", "acdc", "--scene", "{in}/scene.mrb", "--out", "{tmp}"], "needs the Slicer application"),
        (["--preset", "acdc", "--labeled", "{in}/a.nrrd:{in}/a.seg.nrrd", "--iterations", "1,2", "--out", "{tmp}"],
         "three numbers"),
        (["--preset", "acdc", "--labeled", "{in}/a.nrrd:{in}/a.seg.nrrd", "--set", "bogus=1", "--out", "{tmp}"],
         "unknown config key"),
        (["--preset", "acdc", "--labeled", "{in}/a.nrrd:{in}/a.seg.nrrd", "--set", "ema_decay=5", "--out", "{tmp}"],
         "ema_decay=5.0: must be in [0, 1)"),
        (["--preset", "acdc", "--labeled", "{in}/a.nrrd:{in}/a.seg.nrrd", "--set", "patch_size=0,0", "--out", "{tmp}"],
         "patch_size=0,0"),
        (["--preset", "acdc", "--mode", "predict", "--predict", "{in}/p.nii.gz", "--out", "{tmp}"], "needs --model"),
        (["--preset", "brain", "--out", "{tmp}"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_quickly(batch_module, inputs, tmp_path, capsys, args, message):
    """In-process (the script's logic under plain Python): no worker is started for bad input."""
    args = [a.replace("{in}", str(inputs)).replace("{tmp}", str(tmp_path / "o")) for a in args]
    code = batch_module.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "job" / "run").exists()


@pytest.fixture(scope="module")
def batch_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ACTIONPlusPlusBatch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_usage_error_and_help_exit_codes(batch_module, capsys):
    assert batch_module.main(["--help"]) == 0
    assert "--labeled" in capsys.readouterr().out
    assert batch_module.main([]) == 2


def _run_hidden(hidden, *args, timeout=300):
    """The batch script as a subprocess with packages hidden (importing them fails, find_spec says None)."""
    code = ("import runpy, sys\n"
            f"for name in {list(hidden)!r}: sys.modules[name] = None\n"
            f"sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.mark.parametrize("hidden,named", [(["psutil"], "psutil>=5.9"), (["torch"], "torch>=2.1"),
                                          (["torch", "psutil"], "torch>=2.1, psutil>=5.9")])
def test_missing_packages_give_the_install_command_not_a_traceback(inputs, tmp_path, hidden, named):
    result = _run_hidden(hidden, "--preset", "acdc", "--labeled", f"{inputs / 'a.nrrd'}:{inputs / 'a.seg.nrrd'}",
                         "--out", tmp_path / "o")
    assert result.returncode == 2, result.stderr
    assert f"Missing Python packages: {named}" in result.stderr
    assert "-m pip install" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # checked before anything was written


def test_budget_choices_and_where(batch_module, capsys):
    assert batch_module._iterations("acdc", "quick") == {"budget_iterations": 600}
    assert "budget: 600 iterations (pre-training 0 + 0, fine-tuning 600)" in capsys.readouterr().out
    assert batch_module._iterations("la", "paper") == {"budget_iterations": 0}
    assert batch_module._iterations("acdc", "2000") == {"budget_iterations": 2000}
    assert batch_module._iterations("acdc", "1,2,3") == {"budget_iterations": 0, "pretrain_warmup_iterations": 1,
                                                         "pretrain_joint_iterations": 2, "finetune_iterations": 3}
    assert batch_module._iterations("acdc", "quick", minutes=10, speed=0.5) == {"budget_iterations": 1200}
    capsys.readouterr()
    batch_module._iterations("acdc", "2000")  # 22-iteration pre-training phases are dropped, and said so
    assert "note: a budget of 2000 iterations" in capsys.readouterr().out
    assert batch_module.main(["--where"]) == 0
    assert capsys.readouterr().out.strip() == str(SCRIPT.resolve())


def _damaged_inputs(inputs, folder):
    """A truncated .nii.gz, a NaN .nii.gz and a label map on a smaller grid (issue 35)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    whole = (inputs / "p.nii.gz").read_bytes()
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    nan = folder / "nan.nii.gz"  # Slicer's NIfTI reader turns NaN into 0 (its NRRD reader keeps them)
    image = sitk.ReadImage(str(inputs / "u.nrrd"), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[1, 5, 5] = np.nan
    damaged = sitk.GetImageFromArray(array)
    damaged.CopyInformation(image)
    sitk.WriteImage(damaged, str(nan), True)
    label = sitk.ReadImage(str(inputs / "b_label.nii.gz"))
    smaller = folder / "b_small_label.nii.gz"
    sitk.WriteImage(label[4:-4, 4:-4, :], str(smaller), True)
    return truncated, nan, smaller


@pytest.mark.parametrize("which", ["truncated", "nan", "smaller"])
def test_damaged_input_files_exit_2_before_slicer_reads_them(batch_module, inputs, tmp_path, capsys, which):
    """Slicer's reader fills a truncated .nii.gz with zeros, turns NaN into 0 and resamples a label on
    a smaller grid: the files are checked with the CLI's reader first (was: trained, exit 0)."""
    truncated, nan, smaller = _damaged_inputs(inputs, tmp_path / "in")
    pair_b = f"{inputs / 'b.nii.gz'}:{smaller if which == 'smaller' else inputs / 'b_label.nii.gz'}"
    unlabeled = {"truncated": truncated, "nan": nan}.get(which, inputs / "u.nrrd")
    args = ["--preset", "acdc", "--labeled", f"{inputs / 'a.nrrd'}:{inputs / 'a.seg.nrrd'}", "--labeled", pair_b,
            "--unlabeled", str(unlabeled), "--out", str(tmp_path / "o"), "--iterations", "2,2,3", "--device", "cpu"]
    for item in TINY_SET:
        args += ["--set", item]
    code = batch_module.main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    named = {"truncated": truncated, "nan": nan, "smaller": smaller}[which]
    assert str(named) in err and "Traceback" not in err
    assert {"truncated": "truncated", "nan": "NaN", "smaller": "same physical region"}[which] in err
    assert not (tmp_path / "o" / "job").exists()
