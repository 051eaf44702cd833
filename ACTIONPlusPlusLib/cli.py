"""``actionpp`` command line: train, predict, evaluate, demo, worker (= ``python -m ACTIONPlusPlusLib``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import ActionError


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
    p.add_argument("--supervised-only", action="store_true", help="train the supervised-only baseline")
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
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ActionError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return preset(preset_name, **overrides)


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
        elif kind == "stage" and not self.quiet:
            self.bar.write(f"stage {event['stage']} ({event['phase']}): {event['total']} iterations", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    from . import distributed as dist_utils
    from .data import load_dataset
    from .training import phases_for, train

    cfg = build_config(args.preset, args)
    # under torchrun (RANK/WORLD_SIZE set): one process per GPU, DistributedDataParallel (docs/DISTRIBUTED.md)
    distributed = dist_utils.init_from_env(cfg.device)
    try:
        main_process = dist_utils.is_main_process()
        device = dist_utils.local_device(cfg.device) if distributed else None
        dataset = load_dataset(args.data, cfg, labeled=args.labeled, splits=("train",))
        if main_process:
            ranks = f", {dist_utils.world_size()} processes" if distributed else ""
            print(f"{dataset.layout} data: {len(dataset.labeled)} labeled, {len(dataset.unlabeled)} unlabeled{ranks}",
                  file=sys.stderr)
        reporter = TqdmReporter(sum(p.iterations for p in phases_for(cfg)), quiet=args.quiet or not main_process)
        stop = _StopFlag()
        try:
            result = train(cfg, dataset.labeled, dataset.unlabeled, args.out, callback=reporter,
                           resume=args.resume, init_model=args.init_model, should_stop=stop, device=device)
        finally:
            stop.restore()
            reporter.close()
    finally:
        if distributed:
            dist_utils.destroy()
    if result.stopped:
        if main_process:
            print(f"interrupted: checkpoint saved to {result.checkpoint_path}; continue with --resume", file=sys.stderr)
        return 130
    if main_process:
        print(f"model written to {result.model_path}")
    return 0


class _StopFlag:
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


def _input_files(path: Path) -> list[Path]:
    from .data.imageio import has_image_suffix

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and has_image_suffix(p))
        if not files:
            raise ActionError(f"no NIfTI/NRRD images found in {path}")
        return files
    if not path.exists():
        raise ActionError(f"input {path} does not exist")
    return [path]


def cmd_predict(args: argparse.Namespace) -> int:
    from .data.imageio import read_case, split_suffix, write_image, write_label
    from .device import resolve_device
    from .inference import confidence_map, predict_case
    from .model_io import load_model

    device = resolve_device(args.device or "auto")
    model, cfg = load_model(args.model, device=device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for path in _input_files(Path(args.input)):
        case = read_case(path)
        result = predict_case(model, case, cfg, device=device, normalize_input=True, return_probabilities=args.confidence)
        stem, suffix = split_suffix(path)
        suffix = args.suffix or (".nrrd" if suffix == ".nrrd" else ".nii.gz")
        target = write_label(out / f"{stem}_seg{suffix}", result.labels, case)
        if args.confidence and result.probabilities is not None:
            write_image(out / f"{stem}_confidence{suffix}", confidence_map(result.probabilities), case)
        print(target)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .device import resolve_device
    from .evaluation import evaluate_cases
    from .io_utils import atomic_write_text
    from .metrics import format_table
    from .model_io import load_model

    device = resolve_device(args.device or "auto")
    model, cfg = load_model(args.model, device=device)
    dataset = load_dataset(args.data, cfg, splits=(args.split,))
    cases = dataset.test if args.split == "test" else dataset.val
    if not cases:
        raise ActionError(f"the {args.split} split of {args.data} has no cases")
    evaluation = evaluate_cases(model, cfg, cases, device=device)
    print(format_table(evaluation.summary, cfg.foreground_names, f"{cfg.preset} {args.split} ({len(cases)} cases): {args.model}"))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps({"summary": evaluation.summary, "cases": evaluation.per_case}, indent=2, default=float))
    return 0


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
    p.add_argument("--suffix", choices=[".nii.gz", ".nii", ".nrrd"], help="output format (default: like the input)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Dice/Jaccard/HD95/ASD on a labeled split, the paper's table")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--json", type=Path, help="write summary and per-case metrics as JSON")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="phantom data, ACTION++ vs supervised-only, on CPU in a few minutes")
    p.add_argument("--out", type=Path, default=Path("demo_output"))
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    sub.add_parser("worker", help="run a Slicer job file: python -m ACTIONPlusPlusLib worker JOB.json", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        return cmd_worker(argv[1:])
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ActionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        return 130
