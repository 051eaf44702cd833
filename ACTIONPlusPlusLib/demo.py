"""``actionpp demo``: the README's main job, with no download, no GPU and no Slicer.

Generates short-axis cardiac phantoms (LV, Myo, RV), trains ACTION++ on a few labeled and more
unlabeled cases and a supervised-only baseline on the same labeled cases with the same iterations and
seed, predicts held-out cases, prints both Dice tables and writes predictions and a PNG overlay.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .config import preset


def demo_config(quick: bool = False, device: str = "auto"):
    # A small 2D protocol that a laptop CPU finishes in a few minutes: 64x64 patches and a short budget
    # (the panel's quick budget, laid out by budget.py like any other).
    return preset(
        "acdc",
        patch_size=[64, 64],
        budget_iterations=48 if quick else 500,
        local_window=16, local_stride=8, local_pool=4,
        anco_queries=64, anco_negatives=128, saacl_anchors_per_class=64, saacl_queue_size=2048,
        log_every=5, checkpoint_every=10_000, device=device,
    )


DEMO_SEED = 7


def demo_dataset(seed: int = DEMO_SEED):
    """The demo's phantoms: 2 labeled, 10 unlabeled and 4 held-out volumes (deterministic per seed)."""
    from .data.phantoms import cardiac_phantom_dataset

    return cardiac_phantom_dataset(num_labeled=2, num_unlabeled=10, num_test=4, seed=seed)


def _overlay_png(path: Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> Path:
    """Image | truth | prediction side by side, labels blended in the Slicer segment colours."""
    import SimpleITK as sitk

    from .io_utils import atomic_write

    colours = np.array([[0, 0, 0], [181, 85, 57], [192, 104, 88], [152, 55, 13]], dtype=np.float32)
    gray = np.repeat((np.clip(image, 0, 1) * 255)[..., None], 3, axis=2).astype(np.float32)

    def blend(labels: np.ndarray) -> np.ndarray:
        out = gray.copy()
        mask = labels > 0
        out[mask] = 0.45 * gray[mask] + 0.55 * colours[labels[mask]]
        return out

    panel = np.concatenate([gray, blend(truth), blend(pred)], axis=1).clip(0, 255).astype(np.uint8)
    panel = np.kron(panel, np.ones((2, 2, 1), dtype=np.uint8))  # 2x upscale for viewing
    atomic_write(path, lambda tmp: sitk.WriteImage(sitk.GetImageFromArray(panel, isVector=True), str(tmp), imageIO="PNGImageIO"))
    return path


def run_demo(out: Path, quick: bool = False, device: str = "auto", seed: int = DEMO_SEED) -> int:
    from .data.imageio import write_label
    from .evaluation import evaluate_cases
    from .metrics import format_table
    from .model_io import load_model
    from .training import train

    out = Path(out)
    cfg = demo_config(quick, device)
    data = demo_dataset(seed)
    print(f"phantom data: {len(data.labeled)} labeled, {len(data.unlabeled)} unlabeled, {len(data.test)} test volumes "
          f"({sum(c.image.shape[0] for c in data.labeled)} labeled slices)", file=sys.stderr)
    results = {}
    for name, mode in (("ACTION++", "actionpp"), ("supervised-only", "supervised")):
        run_cfg = cfg.replace(mode=mode)
        started = time.perf_counter()
        last = [0.0]

        def report(event, name=name):
            if event.get("event") == "progress" and time.perf_counter() - last[0] > 5:
                last[0] = time.perf_counter()
                print(f"  {name}: {event['stage']} {event['iteration']}/{event['total']} loss {event['loss']:.3f} "
                      f"ETA {event['eta_seconds']:.0f}s", file=sys.stderr)

        print(f"training {name} ({run_cfg.total_iterations} iterations) ...", file=sys.stderr)
        # the demo owns its output folder: a re-run moves the previous run aside (never deletes it)
        result = train(run_cfg, data.labeled, data.unlabeled if mode == "actionpp" else [], out / mode, callback=report,
                       overwrite=True)
        model, model_cfg = load_model(result.model_path)
        evaluation = evaluate_cases(model, model_cfg, data.test, keep_predictions=True)
        results[name] = (evaluation, time.perf_counter() - started)

    for name, (evaluation, seconds) in results.items():
        print(format_table(evaluation.summary, cfg.foreground_names, f"{name} on {len(data.test)} held-out phantoms "
                           f"({seconds:.0f} s of training + inference)"))
        print()
    ours = results["ACTION++"][0].summary["mean"]["dice"]
    base = results["supervised-only"][0].summary["mean"]["dice"]
    print(f"mean Dice: ACTION++ {100 * ours:.1f} vs supervised-only {100 * base:.1f}")

    pred_dir = out / "predictions"
    evaluation = results["ACTION++"][0]
    for case in data.test:
        write_label(pred_dir / f"{case.id}_seg.nii.gz", evaluation.predictions[case.id], case)
    case = data.test[0]
    z = int(np.argmax((case.label > 0).reshape(case.label.shape[0], -1).sum(1)))
    png = _overlay_png(out / "overlay.png", case.image[z], case.label[z], evaluation.predictions[case.id][z])
    print(f"predictions: {pred_dir}\noverlay (image | truth | ACTION++): {png}")
    return 0
