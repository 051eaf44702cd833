"""Background worker: run one ``job.json`` and report JSON lines on stdout (no slicer, no Qt).

Run as ``python -m ACTIONPlusPlusLib worker JOB.json`` or, from an interpreter that does not know the
package (Slicer's ``PythonSlicer`` child), by file path: ``python .../ACTIONPlusPlusLib/worker.py JOB``.

stdout carries exactly one JSON object per line, flushed at once (docs/ARCHITECTURE.md); everything
else (warnings, library logs, tracebacks) goes to stderr.  Events, in order::

    {"event": "start", "job", "device", "torch", "pid", "mode", "preset"}
    {"event": "stage" | "progress" | "checkpoint" | "warning", ...}       from train()
    {"event": "stage", "stage": "predict", "phase": "predict", "total": N}
    {"event": "prediction", "input", "output", "case", "confidence"?, "index", "total"}
    {"event": "done", "model", "predictions": [...], "exit_code": 0}
  or {"event": "error", "message", "type", "exit_code"}
  or {"event": "cancelled", "message", "checkpoint", "resumable", "exit_code": 4}

Exit codes (every ``exit_code`` an event or the process can carry):

- 0 done;
- 1 unexpected error (a bug): the message says where the traceback was logged (``<job>.error.log``);
  the runner also reports 1 for a worker killed from outside (e.g. SIGKILL, out of memory), with the
  signal's name in the event's ``signal`` field;
- 2 bad input: job, data, device, model file, output folder, or a run folder that holds another run /
  is locked by another training;
- 3 training error (NaN loss);
- 4 cancelled by SIGTERM/SIGINT, the stop file (``<job>.stop``), the death of the process that
  started it (``ACTIONPP_PARENT_PID``, else the parent: :class:`ParentWatch`) or a closed event
  stream, after saving a checkpoint: a job with ``"resume": true`` continues from it.  A stop file older than the worker process is left over
  from an earlier run: it is removed at start and does not cancel this one.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any, Callable, Sequence

if __name__ == "__main__" and not __package__:
    # Run by file path: make the package importable, and drop the package folder itself from the path
    # (its module names, e.g. ``config`` or ``data``, must not shadow other libraries' imports).
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_TRAINING, EXIT_CANCELLED = 0, 1, 2, 3, 4


def _plain(value: Any) -> Any:
    """JSON-safe copy: Paths and numpy/torch scalars to plain values, NaN/inf to None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return _plain(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


class Emitter:
    """Writes events as JSON lines to the real stdout (thread-safe, flushed per line).

    When the stream breaks (the reader, Slicer, is gone: a closed pipe), the events are dropped and
    ``on_broken`` is called once (the worker then stops with a checkpoint) instead of raising inside
    the training loop, which would end the run without one."""

    def __init__(self, stream: IO[str], on_broken: Callable[[], None] | None = None) -> None:
        self.stream = stream
        self.on_broken = on_broken
        self.broken = False
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(_plain(event), separators=(",", ":"), allow_nan=False)
        with self._lock:
            if self.broken:
                return
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # BrokenPipeError, or the stream was closed
                self.broken = True
        if self.broken and self.on_broken is not None:
            self.on_broken()


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        return bool(psutil.pid_exists(pid)) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001 - psutil missing or the process vanished in between
        if os.name == "nt":
            return True  # no portable probe without psutil
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class ParentWatch(threading.Thread):
    """Calls ``on_gone`` once when the process that started the worker dies (Slicer crashed or was
    killed), so that the worker saves a checkpoint and stops instead of training on unseen until its
    next write fails.  Polls every ``interval`` seconds: the parent's pid, and on POSIX whether this
    process was handed to another parent."""

    def __init__(self, parent_pid: int, on_gone: Callable[[], None], interval: float = 1.0) -> None:
        super().__init__(name="actionpp-parent-watch", daemon=True)
        self.parent_pid = parent_pid
        self.direct = parent_pid == os.getppid()  # else an ancestor (Slicer behind its launcher)
        self.on_gone = on_gone
        self.interval = interval
        self._stop_event = threading.Event()

    @classmethod
    def for_this_process(cls, on_gone: Callable[[], None]) -> "ParentWatch | None":
        """Watching ``ACTIONPP_PARENT_PID`` (set by the runner: Slicer's pid) or else the parent; None
        when there is nothing to watch (``ACTIONPP_NO_PARENT_WATCH`` set, or already orphaned)."""
        if os.environ.get("ACTIONPP_NO_PARENT_WATCH"):
            return None
        try:
            pid = int(os.environ.get("ACTIONPP_PARENT_PID", "") or os.getppid())
        except ValueError:
            pid = os.getppid()
        if pid <= 1 or not _pid_alive(pid):
            return None
        return cls(pid, on_gone)

    def gone(self) -> bool:
        if self.direct and os.name != "nt" and os.getppid() != self.parent_pid:
            return True  # handed to another parent: ours died (its pid may already be reused)
        return not _pid_alive(self.parent_pid)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            if self.gone():
                self.on_gone()
                return

    def stop(self) -> None:
        self._stop_event.set()


class StopFlag:
    """Set by SIGTERM/SIGINT or by the stop file; polled by train() every iteration."""

    def __init__(self, stop_file: Path | None) -> None:
        self.stop_file = stop_file
        self.signal_name: str | None = None
        self._event = threading.Event()
        self._last_check = 0.0

    def clear_stale(self, started: float, slack: float = 1.0) -> bool:
        """Remove a stop file written before ``started`` (this process's start, epoch seconds): it was
        meant for an earlier run of the job.  Returns True when one was removed.

        A stop file written after the process started (a cancel while the worker was still importing)
        is kept and honoured; ``slack`` absorbs the coarse clock of process start times.
        """
        if self.stop_file is None:
            return False
        try:
            written = self.stop_file.stat().st_mtime
        except OSError:
            return False
        if written >= started - slack:
            return False
        self.stop_file.unlink(missing_ok=True)
        return True

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.signal_name = reason
        self._event.set()

    def __call__(self) -> bool:
        if self._event.is_set():
            return True
        now = time.monotonic()
        if self.stop_file is not None and now - self._last_check > 0.25:
            self._last_check = now
            if self.stop_file.exists():
                self.set("stop file")
        return self._event.is_set()

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.set(signal.Signals(signum).name)

        for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    signal.signal(sig, handler)
                except (OSError, ValueError):  # not the main thread / not supported here
                    pass


class _Cancelled(Exception):
    pass


def _exit_code_for(exc: BaseException) -> int:
    from ACTIONPlusPlusLib.errors import ActionError, TrainingError

    if isinstance(exc, TrainingError):
        return EXIT_TRAINING
    if isinstance(exc, (ActionError, OSError)):  # OSError: unwritable, missing, disk full
        return EXIT_BAD_INPUT
    return EXIT_UNEXPECTED


def _message_for(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    name = type(exc).__name__
    if "OutOfMemory" in name or "out of memory" in text.lower():
        return (f"out of memory: {text.splitlines()[0]}. Use a smaller patch or batch (the config keys "
                "patch_size and pretrain_/finetune_labeled_batch, _unlabeled_batch: --set KEY=VALUE in the batch "
                "script, --patch-size / --batch-size on the command line), fewer volumes, or the CPU")
    if _exit_code_for(exc) == EXIT_UNEXPECTED:
        return f"{name}: {text}"
    return text


def _prediction_inputs(job: Any) -> list[Path]:
    """Every volume to predict: the dataset's imagesUnlabeled/ files (``predict_unlabeled``), then the
    job's predict_dir."""
    from ACTIONPlusPlusLib.data.generic import list_images

    files: list[Path] = []
    unlabeled_dir = Path(job.dataset_dir) / "imagesUnlabeled" if job.dataset_dir is not None else None
    if job.predict_unlabeled and unlabeled_dir is not None and unlabeled_dir.is_dir():
        files.extend(list_images(Path(job.dataset_dir) / "imagesUnlabeled").values())
    files.extend(job.predict_files())
    seen: set[Path] = set()
    unique = []
    for path in files:
        key = Path(path).resolve()
        if key not in seen:
            seen.add(key)
            unique.append(Path(path))
    return unique


def _predict_all(job: Any, model_path: Path, device: Any, emit: Callable[[dict[str, Any]], None],
                 should_stop: Callable[[], bool]) -> list[str]:
    from ACTIONPlusPlusLib.data.imageio import (PREDICTION_NOTE, is_prediction_file, read_case, split_suffix,
                                                write_image, write_label)
    from ACTIONPlusPlusLib.errors import DataError
    from ACTIONPlusPlusLib.inference import predict_case
    from ACTIONPlusPlusLib.model_io import load_model

    inputs = _prediction_inputs(job)
    if not inputs:
        return []
    model, cfg = load_model(model_path, device=device, expect_preset=job.preset)
    out_dir = Path(job.output_dir) / "predictions"
    plan: list[tuple[Path, str, str]] = []  # (input, case id, output suffix)
    used: set[str] = set()
    for path in inputs:
        stem, suffix = split_suffix(path)
        case_id, n = stem, 1
        while case_id.lower() in used:
            n += 1
            case_id = f"{stem}_{n}"
        used.add(case_id.lower())
        plan.append((path, case_id, suffix if suffix in (".nrrd", ".nii.gz", ".nii", ".mha") else ".nrrd"))
    if not job.overwrite:  # a file there that ACTION++ did not write is never replaced
        for _, case_id, suffix in plan:
            for name in (f"{case_id}{suffix}", f"{case_id}_confidence{suffix}" if job.write_confidence else None):
                target = out_dir / name if name else None
                if target is not None and (target.is_dir() or (target.exists() and not is_prediction_file(target))):
                    raise DataError(f"{target} exists and was not written by ACTION++; it is left untouched: "
                                    "move it, or run the job with \"overwrite\": true")
    out_dir.mkdir(parents=True, exist_ok=True)
    emit({"event": "stage", "stage": "predict", "phase": "predict", "total": len(inputs)})
    outputs: list[str] = []
    for index, (path, case_id, suffix) in enumerate(plan, start=1):
        if should_stop():
            raise _Cancelled()
        case = read_case(path, case_id=case_id)
        started = time.perf_counter()
        result = predict_case(model, case, cfg, device=device, return_probabilities=job.write_confidence,
                              normalize_input=True)
        output = write_label(out_dir / f"{case_id}{suffix}", result.labels, case, note=PREDICTION_NOTE)
        event: dict[str, Any] = {"event": "prediction", "input": str(path), "output": str(output), "case": case_id,
                                 "index": index, "total": len(inputs),
                                 "seconds": round(time.perf_counter() - started, 3)}
        if job.write_confidence and result.probabilities is not None:
            confidence = result.probabilities.max(axis=0).astype("float32")
            event["confidence"] = str(write_image(out_dir / f"{case_id}_confidence{suffix}", confidence, case,
                                                  note=PREDICTION_NOTE))
        outputs.append(str(output))
        emit(event)
    return outputs


def run(job_path: Path, emit: Callable[[dict[str, Any]], None], should_stop: StopFlag) -> int:
    """Run the job; every outcome is reported as an event.  Returns the exit code."""
    import torch

    from ACTIONPlusPlusLib.config import preset as make_preset
    from ACTIONPlusPlusLib.device import resolve_device
    from ACTIONPlusPlusLib.errors import DataError
    from ACTIONPlusPlusLib.jobs import read_job

    job = None
    error: BaseException | None = None
    device_name = "unknown"
    try:
        job = read_job(job_path)
        device = resolve_device(job.device)
        device_name = str(device)
    except Exception as exc:  # reported after the start event
        error = exc
    emit({"event": "start", "job": str(job_path), "device": device_name, "torch": torch.__version__,
          "pid": os.getpid(), "mode": getattr(job, "mode", None), "preset": getattr(job, "preset", None)})
    if error is not None:
        raise error
    assert job is not None

    try:
        cfg = make_preset(job.preset, **job.overrides).replace(seed=job.seed, device=job.device)
    except (TypeError, ValueError) as exc:
        from ACTIONPlusPlusLib.config_checks import override_problem

        raise DataError(f"job file {job_path}: field 'overrides' is invalid: "
                        f"{override_problem(job.preset, job.overrides, exc)}") from exc
    from ACTIONPlusPlusLib.config_checks import check_config

    check_config(cfg, f"job file {job_path}: field 'overrides' is invalid")
    if job.mode in ("train", "continue"):
        from ACTIONPlusPlusLib.memory_check import check_training_memory

        check_training_memory(cfg, device)  # a patch/batch that cannot fit: refused before any folder is touched

    model_path: Path | None = Path(job.model) if job.model is not None else None
    checkpoint = Path(job.output_dir) / "checkpoint.pt"
    if job.mode in ("train", "continue"):
        from ACTIONPlusPlusLib.data.layout import load_dataset

        if job.mode == "continue" and model_path is not None:  # refused before any folder is touched
            from ACTIONPlusPlusLib.model_io import check_init_model

            check_init_model(model_path, cfg)
        from ACTIONPlusPlusLib.training import train

        dataset = load_dataset(job.dataset_dir, cfg, labeled=None, splits=("train",), layout="generic")
        for note in dataset.notes:
            emit({"event": "warning", "message": note})
        if should_stop():
            saved = checkpoint.is_file()
            emit({"event": "cancelled",
                  "message": "cancelled before training started; "
                             + (f"the run's checkpoint {checkpoint} is unchanged: a job with \"resume\": true "
                                "continues from it" if saved else "nothing to resume"),
                  "checkpoint": str(checkpoint) if saved else None, "resumable": saved,
                  "exit_code": EXIT_CANCELLED})
            return EXIT_CANCELLED
        result = train(cfg, dataset.labeled, dataset.unlabeled, job.output_dir, callback=emit,
                       resume=job.resume, init_model=model_path if job.mode == "continue" else None,
                       should_stop=should_stop, device=device, overwrite=job.overwrite)
        if result.stopped:
            emit({"event": "cancelled",
                  "message": f"training was cancelled ({should_stop.signal_name or 'stop requested'}) after "
                             f"{result.iterations_done} iterations; the checkpoint is saved and a job with "
                             "\"resume\": true continues from it",
                  "checkpoint": str(result.checkpoint_path), "resumable": True,
                  "iterations_done": result.iterations_done, "exit_code": EXIT_CANCELLED})
            return EXIT_CANCELLED
        model_path = result.model_path
    if model_path is None:
        raise DataError(f"job file {job_path}: no model to predict with")
    try:
        predictions = _predict_all(job, model_path, device, emit, should_stop)
    except _Cancelled:
        emit({"event": "cancelled", "message": "cancelled during prediction; the trained model is saved at "
              f"{model_path}: a 'predict' job with it finishes the predictions",
              "checkpoint": str(checkpoint) if checkpoint.is_file() else None, "model": str(model_path),
              "resumable": False, "exit_code": EXIT_CANCELLED})
        return EXIT_CANCELLED
    emit({"event": "done", "model": str(model_path), "predictions": predictions, "exit_code": EXIT_OK})
    return EXIT_OK


def _private_event_stream() -> tuple[IO[str], Callable[[], None]]:
    """A stream on a duplicate of file descriptor 1 for the events, and fd 1 pointed at stderr.

    C/C++ libraries (ITK, VTK, CUDA) print to fd 1 directly, bypassing ``sys.stdout``: after this,
    whatever they print lands in stderr and the event stream stays one JSON object per line.  Falls
    back to ``sys.stdout`` where there are no real descriptors (embedded interpreters, captured tests).
    """
    try:
        sys.stdout.flush()
        stdout_fd = sys.stdout.fileno()
        stderr_fd = sys.stderr.fileno()
        events_fd = os.dup(stdout_fd)
        os.dup2(stderr_fd, stdout_fd)
    except (AttributeError, OSError, ValueError):
        return sys.stdout, lambda: None
    stream = os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)

    def restore() -> None:
        try:
            stream.flush()
            os.dup2(events_fd, stdout_fd)
        except (OSError, ValueError):
            pass

    return stream, restore


def _process_start_time() -> float:
    """When this process started (epoch seconds): psutil's record, else now (imports already ran)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - psutil missing or the OS refuses: fall back to now
        return time.time()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``argv`` = ``[JOB.json]``.  Returns the exit code (the caller exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    original_stdout = sys.stdout
    events_stream, restore = _private_event_stream()
    sys.stdout = sys.stderr  # stray Python prints must not corrupt the event stream
    emit = Emitter(events_stream)  # on_broken is set once the stop flag exists
    if len(args) != 1 or args[0] in ("-h", "--help"):
        sys.stderr.write("usage: python -m ACTIONPlusPlusLib worker JOB.json\n")
        emit({"event": "error", "message": "usage: worker JOB.json (exactly one job file)", "type": "UsageError",
              "exit_code": EXIT_BAD_INPUT})
        return EXIT_BAD_INPUT
    job_path = Path(args[0]).expanduser().resolve()
    from ACTIONPlusPlusLib.jobs import stop_file_for

    should_stop = StopFlag(stop_file_for(job_path))
    should_stop.install()
    emit.on_broken = lambda: should_stop.set("event stream closed")
    watch = ParentWatch.for_this_process(lambda: should_stop.set("parent process gone"))
    if watch is not None:
        watch.start()
    if should_stop.clear_stale(_process_start_time()):
        sys.stderr.write(f"worker: removed {should_stop.stop_file}, left over from an earlier run of this job\n")
    try:
        return run(job_path, emit, should_stop)
    except KeyboardInterrupt:
        emit({"event": "cancelled", "message": "interrupted", "checkpoint": None, "resumable": False,
              "exit_code": EXIT_CANCELLED})
        return EXIT_CANCELLED
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an event and an exit code
        if isinstance(exc, SystemExit):
            raise
        code = _exit_code_for(exc)
        message = _message_for(exc)
        if code in (EXIT_BAD_INPUT, EXIT_TRAINING):  # the message says it all; a traceback would only alarm
            sys.stderr.write(f"worker: {type(exc).__name__}: {exc}\n")
        else:
            from ACTIONPlusPlusLib.io_utils import write_traceback_log

            traceback.print_exc(file=sys.stderr)
            log = write_traceback_log(exc, [job_path.parent], name=job_path.stem + ".error.log")
            if log is not None:
                message += f" (traceback in {log})"
        emit({"event": "error", "message": message, "type": type(exc).__name__, "exit_code": code})
        return code
    finally:
        if watch is not None:
            watch.stop()
        sys.stdout = original_stdout
        restore()


if __name__ == "__main__":
    sys.exit(main())
