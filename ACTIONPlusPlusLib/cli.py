"""``actionpp`` command line: train, predict, evaluate, demo, worker (= ``python -m ACTIONPlusPlusLib``).

About 500 lines on purpose: the parser, the five subcommands and the exit-code mapping are
read together (one subcommand's options and its handler side by side); the work itself lives in the
trainer's modules.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import ActionError, DataError, ModelFileError, TrainingError

EXIT_OK, EXIT_UNEXPECTED, EXIT_USER_ERROR, EXIT_TRAINING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--iterations", type=int,
                   help="the budget: total iterations, laid out over every phase (budget.py); "
                        "default: the preset's paper schedule")
    p.add_argument("--warmup-iterations", type=int, help="pre-training, global-only warm-up phase")
    p.add_argument("--joint-iterations", type=int, help="pre-training, joint global+local+supervised phase")
    p.add_argument("--pretrain-iterations", type=int, help="pre-training total, split evenly between the two phases")
    p.add_argument("--finetune-iterations", type=int)
    p.add_argument("--patch-size", help="e.g. 256,256 (2D) or 112,112,80 (3D)")
    p.add_argument("--batch-size", help="labeled,unlabeled per iteration (both stages), e.g. 4,4")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--supervised-only", nargs="?", const="plain", choices=("plain", "copy-paste"), default=None,
                   help="train a supervised-only baseline: plain (the default) or copy-paste, the fair baseline "
                        "that mixes labeled images as ACTION++'s strong view mixes labeled and unlabeled ones")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value (repeatable), e.g. --set lambda_a=0.1")


def build_config(preset_name: str, args: argparse.Namespace):
    from .config import preset

    overrides: dict[str, Any] = {}
    phase_flags = [args.pretrain_iterations, args.warmup_iterations, args.joint_iterations, args.finetune_iterations]
    if args.iterations is not None:
        if any(v is not None for v in phase_flags):
            raise ActionError("use either --iterations (a budget laid out over every phase) or the per-phase "
                              "--warmup/--joint/--pretrain/--finetune-iterations, not both")
        if args.iterations < 1:
            raise ActionError(f"--iterations must be at least 1, got {args.iterations}")
        overrides["budget_iterations"] = args.iterations
    if args.pretrain_iterations is not None:
        overrides["pretrain_warmup_iterations"] = args.pretrain_iterations // 2
        overrides["pretrain_joint_iterations"] = args.pretrain_iterations - args.pretrain_iterations // 2
    if args.warmup_iterations is not None:
        overrides["pretrain_warmup_iterations"] = args.warmup_iterations
    if args.joint_iterations is not None:
        overrides["pretrain_joint_iterations"] = args.joint_iterations
    if args.finetune_iterations is not None:
        overrides["finetune_iterations"] = args.finetune_iterations
    if args.patch_size:
        overrides["patch_size"] = args.patch_size
    if args.batch_size:
        lab, _, unl = args.batch_size.partition(",")
        unl = unl or lab
        overrides.update(pretrain_labeled_batch=lab, finetune_labeled_batch=lab,
                         pretrain_unlabeled_batch=unl, finetune_unlabeled_batch=unl)
    if args.device:
        overrides["device"] = args.device
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.supervised_only:
        overrides["mode"] = "supervised"
        overrides["supervised_copy_paste"] = args.supervised_only == "copy-paste"
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    from .config_checks import check_config

    try:
        cfg = preset(preset_name, **overrides)
    except (TypeError, ValueError) as exc:
        raise DataError(f"invalid configuration: {_config_problem(preset_name, overrides, exc)}") from exc
    return check_config(cfg)  # every value (types, ranges, finite, patch sizes), before any folder is touched


def _config_problem(preset_name: str, overrides: dict[str, Any], exc: Exception) -> str:
    """The config error with the option that caused it (``--set lr=abc`` -> names ``lr``)."""
    from .config import preset

    base = preset(preset_name)
    known = set(base.to_dict())
    for key, value in overrides.items():
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else " (see ACTIONPlusPlusLib/config.py)"
            return f"unknown config key {key!r}{hint}"
        try:
            base.replace(**{key: value})
        except (TypeError, ValueError) as single:
            return f"{key}={value!r}: {single}"
    return str(exc)


def pseudo_label_summary(report: dict[str, Any] | None) -> str:
    """`` taught RV 1.2/1.4 Myo 0.0/1.5 ... mask 88% teacher 71``: each class's share among the
    pseudo-labels that pass the mask / among the labeled pixels, so a collapse shows while it happens."""
    if not report:
        return ""
    pseudo, labeled = report.get("taught_fraction", {}), report.get("labeled_fraction", {})
    parts = [f"{name} {100 * pseudo[name]:.1f}/{100 * labeled.get(name, 0.0):.1f}" for name in list(pseudo)[1:]]
    text = " taught " + " ".join(parts) + f" mask {100 * report.get('mask_fraction', 0.0):.0f}%"
    if "teacher_dice" in report:
        text += f" teacher {100 * report['teacher_dice']:.0f}"
    return text


class TqdmReporter:
    """Shows training events as a tqdm bar over both stages (stderr)."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="it", dynamic_ncols=True, disable=quiet, file=sys.stderr)
        self.quiet = quiet

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.bar.n = event["overall_iteration"]
            temps = " ".join(f"{k}={v:.3f}" for k, v in event["temperature"].items())
            self.bar.set_description(f"{event['stage']}/{event['phase']}")
            self.bar.set_postfix_str(f"loss={event['loss']:.4f} lr={event['lr']:.5f} {temps}"
                                     + pseudo_label_summary(event.get("pseudo_labels")))
        elif kind == "warning" and not self.quiet:
            self.bar.write(f"warning: {event['message']}", file=sys.stderr)
        elif kind == "stage" and not self.quiet and event.get("stage") == "export":
            self.bar.write(f"saving the model: BatchNorm statistics over {event['total']} batches of training images",
                           file=sys.stderr)
        elif kind == "stage" and not self.quiet:
            self.bar.write(f"stage {event['stage']} ({event['phase']}): {event['total']} iterations", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed as dist_utils
    from .data import load_dataset
    from .training import phases_for, train

    cfg = build_config(args.preset, args)
    from .memory_check import check_training_memory

    check_training_memory(cfg, dist_utils.local_device(cfg.device))  # a patch/batch that cannot fit: exit 2 now
    if args.init_model is not None:  # damaged, NaN, another preset or network: refused before the run folder is touched
        from .model_io import check_init_model

        check_init_model(args.init_model, cfg)
    # under torchrun (RANK/WORLD_SIZE set): one process per GPU, DistributedDataParallel (docs/DISTRIBUTED.md)
    distributed = dist_utils.init_from_env(cfg.device)
    finished = False
    try:
        main_process = dist_utils.is_main_process()
        device = dist_utils.local_device(cfg.device) if distributed else None
        dataset = load_dataset(args.data, cfg, labeled=args.labeled, splits=("train",))
        if main_process:
            ranks = f", {dist_utils.world_size()} processes" if distributed else ""
            print(f"{dataset.layout} data: {len(dataset.labeled)} labeled, {len(dataset.unlabeled)} unlabeled{ranks}",
                  file=sys.stderr)
        reporter = TqdmReporter(sum(p.iterations for p in phases_for(cfg)), quiet=args.quiet or not main_process)
        stop = StopFlag()
        try:
            result = train(cfg, dataset.labeled, dataset.unlabeled, args.out, callback=reporter,
                           resume=args.resume, init_model=args.init_model, should_stop=stop, device=device,
                           overwrite=args.overwrite)
        finally:
            stop.restore()
            reporter.close()
        finished = True
    finally:
        if distributed:
            dist_utils.destroy(synchronize=finished)
    if result.stopped:
        if main_process:
            print(f"interrupted: checkpoint saved to {result.checkpoint_path}; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if main_process:
        print(f"model written to {result.model_path}")
    return 0


class StopFlag:
    """Ctrl-C / SIGTERM ask the training loop to save a checkpoint and return (resume continues)."""

    def __init__(self) -> None:
        import signal

        self.requested = False
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _input_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(images to segment, files skipped because ACTION++ wrote them) for a file or a folder."""
    from .data.imageio import has_image_suffix, is_prediction_file

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and has_image_suffix(p))
        ours = [p for p in files if is_prediction_file(p)]
        files = [p for p in files if p not in ours]
        if not files:
            what = f" (only {len(ours)} earlier ACTION++ output(s))" if ours else ""
            raise DataError(f"no NIfTI/NRRD/MHA images found in {path}{what}")
        return files, ours
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if is_prediction_file(path):
        raise DataError(f"input {path} is a segmentation written by ACTION++, not an image to segment")
    return [path], []


def _output_names(inputs: list[Path], out: Path, forced_suffix: str | None,
                  confidence: bool) -> list[tuple[Path, Path, Path | None]]:
    """(input, label output, confidence output) per input; outputs keep the input's format (suffix)
    unless ``--suffix`` forces one.  Two inputs that would write one file, or an output that would
    replace an input, are refused naming both files (names compared case-insensitively: macOS and
    Windows file systems ignore case)."""
    from .data.imageio import split_suffix

    inputs_by_name = {p.resolve(): p for p in inputs}
    claimed: dict[str, Path] = {}
    plan = []
    for path in inputs:
        stem, suffix = split_suffix(path)
        suffix = forced_suffix or (".nrrd" if suffix == ".seg.nrrd" else suffix.lower())
        seg = out / f"{stem}_seg{suffix}"
        conf = out / f"{stem}_confidence{suffix}" if confidence else None
        for target in [seg] + ([conf] if conf is not None else []):
            key = target.name.lower()
            if key in claimed:
                raise DataError(
                    f"inputs {claimed[key]} and {path} would both be written to {target}; rename one of them "
                    "or predict them into different --output folders" + (" (or drop --suffix)" if forced_suffix else ""))
            claimed[key] = path
            clash = inputs_by_name.get(target.resolve())
            if clash is not None:
                raise DataError(f"the output for {path} would replace the input {clash}; choose another --output")
        plan.append((path, seg, conf))
    return plan


def _refuse_foreign_outputs(plan: list[tuple[Path, Path, Path | None]], overwrite: bool) -> None:
    """An output name that already holds a file ACTION++ did not write (no prediction mark in its
    header: a user's manual segmentation, say) is refused naming it, unless ``--overwrite``."""
    from .data.imageio import is_prediction_file

    if overwrite:
        return
    for _, *targets in plan:
        for target in targets:
            if target is not None and (target.is_dir() or (target.exists() and not is_prediction_file(target))):
                raise DataError(
                    f"{target} exists and was not written by ACTION++ (a segmentation of yours?); it is left "
                    "untouched: choose another --output, or pass --overwrite to replace it")


def _output_folder(out: Path, option: str) -> Path:
    from .io_utils import check_writable_dir

    if out.exists() and not out.is_dir():
        raise DataError(f"{option} {out} is a file, not a folder")
    try:
        return check_writable_dir(out)
    except PermissionError as exc:
        raise DataError(f"{option}: {exc}") from exc


def cmd_predict(args: argparse.Namespace) -> int:
    from .data.imageio import PREDICTION_NOTE, read_case, write_image, write_label
    from .device import resolve_device
    from .inference import confidence_map, predict_case
    from .model_io import load_model

    out = _output_folder(Path(args.output), "--output")
    inputs, ours = _input_files(Path(args.input))
    plan = _output_names(inputs, out, args.suffix, args.confidence)
    _refuse_foreign_outputs(plan, args.overwrite)
    device = resolve_device(args.device or "auto")
    model, cfg = load_model(args.model, device=device, expect_preset=args.preset)
    if ours:
        print(f"skipped {len(ours)} file(s) written by an earlier ACTION++ prediction (e.g. {ours[0].name})",
              file=sys.stderr)
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    args.predict_progress = (written, len(plan), out)  # for the message when the run is interrupted
    for path, seg, conf in plan:
        try:
            case = read_case(path)
            _check_fits_model(case, cfg, args.model)
        except ActionError as exc:  # this input only (damaged, NaN, a slice for a 3D model): go on with the rest
            if len(plan) == 1:
                raise
            failed.append((path, str(exc)))
            print(f"error: {exc}", file=sys.stderr)
            continue
        result = predict_case(model, case, cfg, device=device, normalize_input=True, return_probabilities=args.confidence)
        target = write_label(seg, result.labels, case, note=PREDICTION_NOTE)
        if conf is not None and result.probabilities is not None:
            write_image(conf, confidence_map(result.probabilities), case, note=PREDICTION_NOTE)
        written.append(target)
        print(target)
    if failed:  # one line per failed input above (each names its file), then the summary
        print(f"{len(written)} of {len(plan)} image(s) segmented into {out}; not segmented: "
              f"{', '.join(path.name for path, _ in failed)} (errors above)", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def _check_fits_model(case: Any, cfg: Any, model_path: Path) -> None:
    """Refuse data the model cannot have been trained for: a single slice for a 3D model, or label values
    beyond the model's classes."""
    if cfg.dim == 3 and case.image.shape[0] == 1:
        raise ModelFileError(f"{model_path} is a 3D {cfg.preset!r} model but {case.path or case.id} is a single 2D slice")
    if case.label is not None:
        top = int(case.label.max()) if case.label.size else 0
        if top >= cfg.num_classes:
            raise ModelFileError(
                f"{model_path} predicts {cfg.num_classes} classes ({', '.join(cfg.class_names)}, preset {cfg.preset!r}) "
                f"but the label of case {case.id!r} ({case.path}) holds class {top}: the model was trained for "
                "other data (another preset?)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .device import resolve_device
    from .evaluation import evaluate_cases
    from .io_utils import atomic_write_text
    from .metrics import format_table
    from .model_io import load_model

    if args.json is not None:  # fail before computing everything, not after
        if Path(args.json).is_dir():
            raise DataError(f"--json {args.json} is a folder; give a file name")
        _output_folder(Path(args.json).resolve().parent, "--json")
    device = resolve_device(args.device or "auto")
    model, cfg = load_model(args.model, device=device, expect_preset=args.preset)
    dataset = load_dataset(args.data, cfg, splits=(args.split,))
    cases = dataset.test if args.split == "test" else dataset.val
    if not cases:
        raise DataError(f"the {args.split} split of {args.data} has no cases")
    for case in cases:
        if case.label is None:
            raise DataError(f"case {case.id!r} of the {args.split} split of {args.data} has no label: cannot evaluate it")
        _check_fits_model(case, cfg, args.model)
    evaluation = evaluate_cases(model, cfg, cases, device=device)
    print(format_table(evaluation.summary, cfg.foreground_names, f"{cfg.preset} {args.split} ({len(cases)} cases): {args.model}"))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"summary": evaluation.summary, "cases": evaluation.per_case}, indent=2, default=float))
    return EXIT_OK


def model_card(path: Path) -> dict:
    """What ``model.pt`` says of itself: preset, classes, mode, cases, iterations, device, when, versions."""
    from .model_io import load_model, read_model_meta

    _, cfg = load_model(path)  # checks the file (format, checksum, weights) before anything is printed
    meta = read_model_meta(path)
    card = {"model": str(path), "preset": cfg.preset, "classes": list(cfg.foreground_names), "patch_size": list(cfg.patch_size)}
    for key in ("mode", "labeled_cases", "unlabeled_cases", "iterations", "device", "saved_at", "dataset",
                "actionpp_version", "torch_version"):
        if key in meta:
            card[key] = meta[key]
    if isinstance(card.get("saved_at"), (int, float)):
        card["saved_at"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(card["saved_at"]))
    return card


def cmd_info(args: argparse.Namespace) -> int:
    print(json.dumps(model_card(args.model), indent=2, default=str))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), quick=args.quick, device=args.device)


def cmd_worker(rest: Sequence[str]) -> int:
    from . import worker

    return int(worker.main(list(rest)) or 0)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actionpp", description="ACTION++ semi-supervised segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train ACTION++ on an ACDC, LA or NIfTI/NRRD data folder")
    p.add_argument("--preset", required=True, choices=["acdc", "la"])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--labeled", type=int, help="ACDC: patients (3 = 5%%, 7 = 10%%); LA: volumes (4, 8); generic: pairs")
    p.add_argument("--out", required=True, type=Path, help="run folder (config.json, checkpoint.pt, model.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an OUT that holds one (the old run is moved to OUT/previous-<time>/)")
    p.add_argument("--init-model", type=Path, help="warm-start from a previous model.pt")
    p.add_argument("--quiet", action="store_true")
    _add_training_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment NIfTI/NRRD images with a trained model")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    p.add_argument("--output", required=True, type=Path)
    p.add_argument("--device", default=None)
    p.add_argument("--confidence", action="store_true", help="also write max-probability confidence maps")
    p.add_argument("--suffix", choices=[".nii.gz", ".nii", ".nrrd", ".mha"], help="output format (default: like the input)")
    p.add_argument("--preset", choices=["acdc", "la"], help="refuse a model trained for another preset")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that ACTION++ did not write (its own earlier predictions are "
                        "always replaced)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Dice/Jaccard/HD95/ASD on a labeled split, the paper's table")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--json", type=Path, help="write summary and per-case metrics as JSON")
    p.add_argument("--preset", choices=["acdc", "la"], help="refuse a model trained for another preset")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="what a model.pt was trained on: preset, cases, iterations, device, date")
    p.add_argument("--model", required=True, type=Path)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="phantom data, ACTION++ vs supervised-only, on CPU in a few minutes")
    p.add_argument("--out", type=Path, default=Path("demo_output"))
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    sub.add_parser("worker", help="run a Slicer job file: python -m ACTIONPlusPlusLib worker JOB.json", add_help=False)
    return parser


def _log_folders(args: argparse.Namespace) -> list[Path | None]:
    """Where an unexpected error's traceback goes: the command's output folder when it exists (else
    write_traceback_log falls back to the system temp folder)."""
    out = getattr(args, "out", None) or getattr(args, "output", None)
    if out is None and getattr(args, "json", None) is not None:
        out = Path(args.json).parent
    return [Path(out) if out is not None else None]


def _interrupted_message(args: argparse.Namespace) -> str:
    progress = getattr(args, "predict_progress", None)
    if progress is not None:
        written, total, out = progress
        last = f" (the last: {written[-1].name})" if written else ""
        return (f"interrupted: {len(written)} of {total} segmentation(s) were written to {out}{last}; "
                "run predict again for the rest (it replaces its own earlier outputs)")
    out = getattr(args, "out", None)
    if getattr(args, "command", None) == "train" and out is not None and (Path(out) / "checkpoint.pt").is_file():
        return f"interrupted; continue the run in {out} with --resume"
    if getattr(args, "command", None) in ("predict", "evaluate"):
        return "interrupted before anything was written"
    return "interrupted before training started; nothing was saved"


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command.  Exit codes: 0 done, 1 unexpected error (traceback in a log file), 2 user error
    (one line naming the problem and the path; predict: some inputs could not be segmented, a summary
    line follows their errors), 3 training error (NaN loss), 130 interrupted (Ctrl-C or SIGTERM, from
    the start of the command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        return cmd_worker(argv[1:])
    args = make_parser().parse_args(argv)
    previous_sigterm = _sigterm_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TRAINING
    except ActionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # unwritable / missing / full: the user's environment, named by the OS error
        text = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        print(f"error: {text}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback in a log file
        from .io_utils import write_traceback_log

        log = write_traceback_log(exc, _log_folders(args))
        where = f"; the traceback is in {log}" if log is not None else ""
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"error: unexpected {type(exc).__name__}: {first}{where}", file=sys.stderr)
        return EXIT_UNEXPECTED
    finally:
        _restore_sigterm(previous_sigterm)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt() -> Any:
    """SIGTERM handled like Ctrl-C (exit 130 with a message) from the start of a command, not only
    once training runs (its own handler then saves a checkpoint first); returns the previous handler."""
    import signal

    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except (ValueError, OSError):  # not the main thread
        return None


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):
            pass
