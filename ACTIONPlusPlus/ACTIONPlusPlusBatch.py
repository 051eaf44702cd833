"""Headless ACTION++ training and prediction from files: no window, no dialog, an exit code.

In 3D Slicer::

    Slicer --no-main-window --python-script ACTIONPlusPlusBatch.py -- \\
        --preset la --labeled img1.nrrd:img1.seg.nrrd --labeled img2.nii.gz:img2-label.nii.gz \\
        --unlabeled img3.nrrd img4.nrrd --predict new.nrrd --out /data/run1 --iterations quick --device auto

Installed with the extension, this file is ``ACTIONPlusPlusBatch.py`` in the extension's
``lib/Slicer-X.Y/qt-scripted-modules`` folder (``--where`` prints its path); in the source tree it is
``ACTIONPlusPlus/ACTIONPlusPlusBatch.py``.

With plain Python and the ``slicer-core`` wheel (how it is tested; same code path)::

    python ACTIONPlusPlus/ACTIONPlusPlusBatch.py --preset acdc --labeled ... --out DIR

Inputs are read into a scene through MRML storage nodes (exactly as Slicer reads them); a labeled pair
is ``IMAGE:LABEL`` where LABEL is a ``.seg.nrrd`` segmentation (segments matched to classes by name) or a
label map file (voxel values = class values).  ``--scene scene.mrb`` loads a Slicer scene and then names
NODES instead of files (``--labeled "MRI:MRI segmentation"``); this needs the Slicer application.

The job folder (``OUT/job``), the run (``OUT/job/run``: model.pt, checkpoint.pt, predictions) and one
``<volume> ACTION++.seg.nrrd`` per predicted volume in OUT are written.  Progress goes to stdout, one line
per event.  Exit codes are the worker's: 0 done, 1 unexpected error, 2 bad input, 3 training error
(NaN), 4 cancelled (Ctrl+C / SIGTERM: the checkpoint is saved; rerun with ``--resume``).  Missing
packages (torch, psutil) are reported before anything is loaded, with the command that installs them
(exit code 2).

Budget (``--iterations``): ``quick`` (600 iterations for ACDC, 400 for LA), ``paper`` (the preset's
schedule), ``N`` (N iterations laid out over every phase), or ``W,J,F`` (explicit warm-up, joint and
fine-tuning counts); ``--minutes M`` instead estimates the iterations that fit in M minutes.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT = 0, 1, 2


def _make_lib_importable() -> None:
    """Source tree: the Lib is beside this folder; installed extension: in the same folder."""
    script = globals().get("__file__") or (sys.argv[0] if sys.argv and sys.argv[0] else ".")
    here = Path(script).resolve().parent
    for folder in (here, here.parent):
        if (folder / "ACTIONPlusPlusLib" / "__init__.py").is_file() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ACTIONPlusPlusBatch.py",
        description="Train ACTION++ on labeled + unlabeled volumes and segment volumes, headless.",
    )
    p.add_argument("--preset", required=True, choices=["la", "acdc"], help="la: left atrium 3D; acdc: RV/Myo/LV 2D")
    p.add_argument("--labeled", action="append", default=[], metavar="IMAGE:LABEL",
                   help="a labeled case (repeatable): image file and .seg.nrrd or label map file (or node names with --scene)")
    p.add_argument("--unlabeled", nargs="+", action="extend", default=[], metavar="IMAGE",
                   help="unlabeled images used for training (and predicted afterwards)")
    p.add_argument("--predict", nargs="+", action="extend", default=[], metavar="IMAGE", help="more images to segment")
    p.add_argument("--scene", metavar="SCENE.mrb", help="load a Slicer scene; other arguments then name its nodes (Slicer only)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--mode", choices=["train", "predict", "continue"], default=None,
                   help="train (default), predict (needs --model), continue (warm start from --model)")
    p.add_argument("--model", metavar="MODEL.pt", help="an existing model (predict or continue)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT/job/run")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run although OUT/job/run holds one (it is moved to OUT/job/run/previous-<time>/)")
    p.add_argument("--iterations", default="paper", metavar="quick|paper|N|W,J,F",
                   help="training budget: quick, paper (default), N iterations over all phases, or explicit "
                        "warm-up,joint,fine-tuning numbers")
    p.add_argument("--minutes", type=float, metavar="M",
                   help="training budget in minutes (instead of --iterations), estimated from the speed given by "
                        "--seconds-per-iteration or a stated default")
    p.add_argument("--seconds-per-iteration", type=float, metavar="S", help="measured speed for --minutes")
    p.add_argument("--where", action="store_true", help="print this script's path and exit")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config override (repeatable)")
    p.add_argument("--confidence", action="store_true", help="also save a confidence volume per prediction")
    p.add_argument("--no-predict-unlabeled", action="store_true", help="do not segment the unlabeled images")
    p.add_argument("--suffix", default=".nrrd", choices=[".nrrd", ".nii.gz"], help="file format inside the job folder")
    return p


class BatchError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


def _iterations(preset: str, text: str, minutes: float | None = None, speed: float | None = None) -> dict[str, int]:
    """Config overrides for the budget; prints how it lays out (and any note about dropped phases)."""
    from ACTIONPlusPlusLib.slicer_bridge.panel import budget_choice

    text = text.strip().lower()
    try:
        if minutes is not None:
            budget = budget_choice.budget_for(preset, "custom", minutes, "minutes", speed)
        elif text in ("quick", "paper"):
            budget = budget_choice.budget_for(preset, text)
        else:
            parts = [int(v) for v in re.split(r"[,x ]+", text) if v]
            if len(parts) == 1:
                budget = budget_choice.budget_for(preset, "custom", parts[0])
            else:
                return budget_choice.explicit_iterations(parts)
    except ValueError as exc:
        what = f"--minutes {minutes:g}" if minutes is not None else f"--iterations {text!r}"
        raise BatchError(f"{what}: {exc} (use quick, paper, a number N or three numbers W,J,F)") from exc
    print(f"budget: {budget.summary}", flush=True)
    for note in budget.notes:
        print(f"note: {note}", flush=True)
    return budget.overrides


def _overrides(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = dict(_iterations(preset, args.iterations, args.minutes, args.seconds_per_iteration))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BatchError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()
    from ACTIONPlusPlusLib.config import preset as make_preset

    from ACTIONPlusPlusLib.config_checks import check_config

    try:
        cfg = check_config(make_preset(preset, **overrides))  # every value, as the CLI and the worker check it
    except ValueError as exc:
        raise BatchError(f"invalid configuration: {exc}" if not str(exc).startswith("invalid configuration")
                         else str(exc)) from exc
    # store typed values (the strings of --set parsed by the config)
    return {key: getattr(cfg, key) for key in overrides}


class Resolver:
    """Turns command-line items into scene nodes: files are loaded, names looked up (with --scene)."""

    def __init__(self, scene: Any, by_name: bool) -> None:
        self.scene = scene
        self.by_name = by_name
        self.loaded: dict[tuple[str, str], Any] = {}

    def _node_by_name(self, name: str, classes: Sequence[str]) -> Any:
        for cls in classes:
            nodes = self.scene.GetNodesByClassByName(cls, name)
            for i in range(nodes.GetNumberOfItems()):
                node = nodes.GetItemAsObject(i)
                if cls == "vtkMRMLScalarVolumeNode" and node.IsA("vtkMRMLLabelMapVolumeNode") and len(classes) == 1:
                    continue
                return node
        return None

    def volume(self, item: str) -> Any:
        from ACTIONPlusPlusLib.slicer_bridge.node_files import load_volume_file

        key = ("volume", item)
        if key in self.loaded:
            return self.loaded[key]
        if Path(item).is_file():
            node = load_volume_file(self.scene, item)
        elif self.by_name and self._node_by_name(item, ["vtkMRMLScalarVolumeNode"]) is not None:
            node = self._node_by_name(item, ["vtkMRMLScalarVolumeNode"])
        else:
            raise BatchError(f"image {item!r} not found" + (" (neither a file nor a volume node of the scene)" if self.by_name else ""))
        self.loaded[key] = node
        return node

    def label(self, item: str) -> Any:
        from ACTIONPlusPlusLib.slicer_bridge.node_files import load_label_file

        if Path(item).is_file():
            return load_label_file(self.scene, item)
        if self.by_name:
            node = self._node_by_name(item, ["vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"])
            if node is not None:
                return node
        raise BatchError(f"label {item!r} not found" + (" (neither a file nor a segmentation node of the scene)" if self.by_name else ""))

    def exists(self, item: str) -> bool:
        if Path(item).is_file():
            return True
        return self.by_name and self._node_by_name(
            item, ["vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"]) is not None

    def split(self, item: str) -> tuple[str, str] | None:
        """``IMAGE:LABEL`` -> its two parts: the ':' whose both sides exist (Windows drive letters)."""
        for i in reversed([i for i, ch in enumerate(item) if ch == ":"]):
            left, right = item[:i], item[i + 1:]
            if left and right and self.exists(left) and self.exists(right):
                return left, right
        return None

    def pair(self, item: str) -> tuple[Any, Any]:
        parts = self.split(item)
        if parts is not None:
            return self.volume(parts[0]), self.label(parts[1])
        cuts = [i for i, ch in enumerate(item) if ch == ":"]
        if not cuts:
            raise BatchError(f"--labeled {item!r}: expected IMAGE:LABEL")
        raise BatchError(f"--labeled {item!r}: image or label not found")


def verify_files(resolver: Resolver, labeled: Sequence[str], images: Sequence[str]) -> None:
    """The input files checked on disk with the command line's reader before Slicer's reader sees them
    (it fills a truncated .nii.gz with zeros and turns NaN into 0): a damaged file, NaN/Inf voxels or a
    label map on another grid raise the CLI's DataError naming the file (exit 2).  Node names (--scene)
    are not files and are left to the scene."""
    from ACTIONPlusPlusLib.data.validation import verify_image_file, verify_label_file

    for item in labeled:
        parts = resolver.split(item)
        if parts is not None and Path(parts[0]).is_file() and Path(parts[1]).is_file():
            verify_label_file(parts[0], parts[1])
    for item in images:
        if Path(item).is_file():
            verify_image_file(item)


def _format_event(event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "start":
        return f"worker started (device {event.get('device')}, torch {event.get('torch')})"
    if kind == "stage":
        return f"stage {event.get('stage')}/{event.get('phase')}: {event.get('total')} steps"
    if kind == "progress":
        eta = int(event.get("eta_seconds") or 0)
        loss = event.get("loss")
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else "n/a"
        return (f"[{event.get('stage')}/{event.get('phase')}] it {event.get('iteration')}/{event.get('total')} "
                f"(overall {event.get('overall_iteration')}/{event.get('overall_total')}) loss {loss_text} "
                f"{event.get('seconds_per_iteration') or 0:.2f} s/it ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")
    if kind == "checkpoint":
        return f"checkpoint saved: {event.get('path')}"
    if kind == "warning":
        return f"warning: {event.get('message')}"
    if kind == "prediction":
        return f"predicted {event.get('case')} -> {event.get('output')}"
    if kind == "done":
        return f"done: model {event.get('model')}"
    if kind in ("error", "cancelled"):
        return f"{kind}: {event.get('message')}"
    return None


def _file_name(name: str) -> str:
    return re.sub(r'[<>:"/\\|?*\x00-\x1f]+', "_", name).strip(" .") or "segmentation"


def run(argv: Sequence[str]) -> int:
    """Parse, load, write the job, run the worker, save the results.  Returns the exit code."""
    if "--where" in argv:  # before parsing: needs no other argument
        print(Path(globals().get("__file__") or sys.argv[0]).resolve(), flush=True)
        return EXIT_OK
    args = build_parser().parse_args(list(argv))
    _make_lib_importable()
    from ACTIONPlusPlusLib.slicer_bridge.panel import install_plan

    in_slicer = getattr(sys.modules.get("slicer"), "app", None) is not None
    problem = install_plan.batch_dependency_problem(in_slicer)  # before anything needs torch or psutil
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    import slicer

    from ACTIONPlusPlusLib.errors import ActionError
    from ACTIONPlusPlusLib.slicer_bridge.job_folder import write_training_job
    from ACTIONPlusPlusLib.slicer_bridge.node_files import save_node
    from ACTIONPlusPlusLib.slicer_bridge.results import load_predictions
    from ACTIONPlusPlusLib.slicer_bridge.runner import WorkerProcess

    in_slicer = getattr(slicer, "app", None) is not None
    mode = args.mode or ("predict" if args.model and not args.labeled else "train")
    try:
        if args.scene:
            if not in_slicer:
                raise BatchError(
                    f"--scene {args.scene}: loading a .mrb scene needs the Slicer application "
                    "(Slicer --no-main-window --python-script ...); with plain Python pass image and label files")
            if not Path(args.scene).is_file():
                raise BatchError(f"--scene {args.scene}: file not found")
            try:  # raises RuntimeError with the reader's messages on failure (its return value is a node)
                slicer.util.loadScene(str(args.scene))
            except RuntimeError as exc:
                raise BatchError(f"cannot load scene {args.scene}: {exc}") from exc
        scene = slicer.mrmlScene if in_slicer else slicer.vtkMRMLScene()
        if mode in ("predict", "continue") and not args.model:
            raise BatchError(f"--mode {mode} needs --model MODEL.pt")
        if mode != "predict" and not args.labeled:
            raise BatchError("no --labeled IMAGE:LABEL pair given")
        if mode == "predict" and not (args.predict or args.unlabeled):
            raise BatchError("nothing to segment: give --predict IMAGE (or --unlabeled)")
        overrides = _overrides(args.preset, args)
        resolver = Resolver(scene, by_name=bool(args.scene))
        verify_files(resolver, args.labeled, [*args.unlabeled, *args.predict])
        pairs = [resolver.pair(item) for item in args.labeled]
        unlabeled = [resolver.volume(item) for item in args.unlabeled]
        predict = [resolver.volume(item) for item in args.predict]
        out = Path(args.out)
        job_path = write_training_job(
            scene, pairs, unlabeled, predict, out / "job", args.preset, mode=mode,
            model=Path(args.model).resolve() if args.model else None, resume=args.resume, overrides=overrides,
            device=args.device, seed=args.seed, write_confidence=args.confidence,
            predict_unlabeled=not args.no_predict_unlabeled, file_suffix=args.suffix, overwrite=args.overwrite,
        )
    except (BatchError, ActionError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT

    print(f"job written: {job_path}", flush=True)
    worker = WorkerProcess(job_path, force_cpu=args.device.lower() == "cpu").start()
    previous = {}

    def forward(signum: int, _frame: Any) -> None:  # Ctrl+C / SIGTERM: let the worker checkpoint
        print("cancelling: the worker saves a checkpoint first...", flush=True)
        worker.request_cancel(kill_after=60.0)

    for name in ("SIGINT", "SIGTERM"):
        sig = getattr(signal, name, None)
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, forward)
            except (OSError, ValueError):
                pass
    events: list[dict[str, Any]] = []
    try:
        for event in worker.wait_events():
            events.append(event)
            line = _format_event(event)
            if line:
                print(line, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if worker.is_running:
            worker.kill()
    code = worker.exit_code if worker.exit_code is not None else EXIT_UNEXPECTED
    if code != 0:
        for line in list(worker.log_lines)[-15:]:
            print(f"  worker: {line}", file=sys.stderr)
        return code

    try:
        imports = load_predictions(scene, job_path.parent, events, with_confidence=args.confidence)
        saved = 0
        for item in imports:
            if item.segmentation_node is None:
                print(f"warning: {item.message}", file=sys.stderr, flush=True)
                continue
            path = save_node(item.segmentation_node, out / f"{_file_name(item.segmentation_node.GetName())}.seg.nrrd")
            print(f"saved {path}", flush=True)
            saved += 1
            if item.confidence_node is not None:
                conf = save_node(item.confidence_node, out / f"{_file_name(item.confidence_node.GetName())}.nrrd")
                print(f"saved {conf}", flush=True)
    except (ActionError, OSError) as exc:
        print(f"error: could not save the results: {exc}", file=sys.stderr, flush=True)
        return EXIT_UNEXPECTED
    print(f"finished: {saved} segmentation(s) in {out}", flush=True)
    return EXIT_OK


try:  # inside Slicer this file is installed with the module and scanned like one
    from slicer.ScriptedLoadableModule import ScriptedLoadableModule as _ModuleBase
except ImportError:  # plain Python / slicer-core: no module machinery, the class is never instantiated
    _ModuleBase = object


class ACTIONPlusPlusBatch(_ModuleBase):  # type: ignore[misc, valid-type]
    """Hidden module entry so that Slicer's module scanner accepts this file; the batch work is main()."""

    def __init__(self, parent) -> None:
        _ModuleBase.__init__(self, parent)
        parent.title = "ACTIONPlusPlus batch"
        parent.categories = ["Segmentation"]
        parent.hidden = True
        parent.helpText = "Headless batch entry point: Slicer --no-main-window --python-script ACTIONPlusPlusBatch.py -- ARGS"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":  # "Slicer --python-script script.py -- ARGS" may pass the separator on
        args = args[1:]
    try:
        return run(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - headless: report and exit, never hang or open a dialog
        log = _log_traceback(exc, args)
        where = f"; the traceback is in {log}" if log is not None else ""
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: unexpected {type(exc).__name__}: {first}{where}", file=sys.stderr, flush=True)
        return EXIT_UNEXPECTED


def _log_traceback(exc: BaseException, args: Sequence[str]) -> Path | None:
    """Write ``exc``'s traceback into the --out folder (else the temp folder); its path or None."""
    out = None
    for i, item in enumerate(args):
        if item == "--out" and i + 1 < len(args):
            out = Path(args[i + 1])
        elif item.startswith("--out="):
            out = Path(item.split("=", 1)[1])
    try:
        from ACTIONPlusPlusLib.io_utils import write_traceback_log
    except ImportError:
        import traceback

        traceback.print_exc()
        return None
    return write_traceback_log(exc, [out], name="ACTIONPlusPlusBatch-error.log")


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.exit(code)
