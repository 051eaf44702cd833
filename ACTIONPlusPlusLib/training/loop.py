"""``train``: both stages of ACTION++ (or the supervised-only baseline) with checkpoints and resume.

Phases run in order: pre-training warm-up (global ISD, fixed temperatures), pre-training joint phase
(global + local ISD + supervised, ATS temperatures), fine-tuning (sup + pseudo-label + AnCo + SAACL,
ATS).  Each phase builds a fresh SGD optimiser with its own poly schedule, as the authors' separate
scripts do.  The loop keeps work on the device: losses are accumulated as tensors and read back only
every ``log_every`` iterations (the NaN check happens there and before every checkpoint).

Why one file of ~450 lines: the Trainer's state (networks, heads, optimiser, generators, phase and
iteration) is what a checkpoint saves and a resume restores, and ``step_once`` is shared by the loop
and ``bench/train_step.py``; splitting the class would spread that one state over several files.  The
phases' steps themselves live in ``pretrain.py`` and ``finetune.py``.
"""

from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed as dist_utils
from ..budget import cached_pretraining_iterations
from ..config import Config
from ..data.types import Case
from ..device import amp_description, amp_dtype, grad_scaler
from ..device import autocast as device_autocast
from ..device import channels_last_2d, resolve_device, tune_backends
from ..errors import DataError, ModelFileError, TrainingError
from ..io_utils import check_writable_dir
from ..models import build_network, encoder_state
from ..schedules import ats_temperature, ema_update, poly_lr, set_lr, sigmoid_rampup
from .batches import BatchSource
from .checkpoint import load_checkpoint, save_checkpoint
from .events import Callback, ProgressTracker
from .export import export_network, recalibration_batches
from .finetune import FinetuneHeads, FinetuneStep, SupervisedStep
from .pretrain import ISDHeads, PretrainStep

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
PRETRAIN_CHECKPOINT_NAME = "checkpoint_pretrain.pt"


@dataclass
class Phase:
    name: str  # warmup | joint | finetune | supervised
    stage: str  # pretrain | finetune | supervised
    iterations: int


@dataclass
class TrainResult:
    model_path: Path | None
    checkpoint_path: Path
    config_path: Path
    stopped: bool = False
    iterations_done: int = 0
    warnings: list[str] = field(default_factory=list)


def phases_for(cfg: Config) -> list[Phase]:
    lengths = cfg.phase_lengths()  # the budget's layout, or the explicit counts
    if cfg.mode == "supervised":
        return [Phase("supervised", "supervised", lengths.total)]
    return [
        Phase("warmup", "pretrain", lengths.warmup),
        Phase("joint", "pretrain", lengths.joint),
        Phase("finetune", "finetune", lengths.finetune),
    ]


class Trainer:
    """Holds every piece of training state; ``run`` drives the phases."""

    def __init__(self, cfg: Config, labeled: list[Case], unlabeled: list[Case], out_dir: Path,
                 callback: Callback | None = None, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = device or resolve_device(cfg.device)
        tune_backends(self.device, onednn_matmul=cfg.cpu_onednn_matmul, retain_memory=cfg.cpu_retain_memory)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed + dist_utils.rank())
        self.host_gen = torch.Generator().manual_seed(cfg.seed + 1 + dist_utils.rank())
        self.dev_gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2 + dist_utils.rank())
        self.student = build_network(cfg).to(self.device)
        if channels_last_2d(cfg.dim, self.device, cfg.cpu_channels_last):
            self.student = self.student.to(memory_format=torch.channels_last)
        if cfg.sync_batchnorm and dist_utils.is_distributed() and self.device.type == "cuda":  # no CPU kernel
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.isd = ISDHeads(cfg, self.student.latent_channels,
                            feature_channels=self.student.feature_channels[-1]).to(self.device)
        self.ft = FinetuneHeads(cfg, self.student.feature_channels).to(self.device)
        self.batches = BatchSource(cfg, labeled, unlabeled, self.device)
        self.phases = phases_for(cfg)
        self.tracker = ProgressTracker(callback if dist_utils.is_main_process() else None, sum(p.iterations for p in self.phases))
        self.phase_index = 0
        self.iteration = 0  # completed iterations within the current phase
        self.optimizer: torch.optim.Optimizer | None = None
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.train_student = self.student  # replaced by the DDP wrapper under torchrun
        # set by distributed_setup.wrap_for_ddp: average the heads' gradients / BN statistics over ranks
        self.sync_gradients: Callable[[], None] | None = None
        self.sync_buffers: Callable[[], None] | None = None
        # --- mixed precision (issue 11): the dtype the GPU supports; fp16 needs a gradient scaler ---
        self.amp_dtype = amp_dtype(self.device, cfg.amp, cpu_bf16=cfg.cpu_bf16)
        if self.device.type == "cpu" and self.amp_dtype is torch.bfloat16 and cfg.dim == 3 \
                and min(cfg.patch_size[:2]) // 16 < 3:
            # oneDNN's bf16 3D weight gradients come out as garbage (often NaN) when the V-Net's deepest
            # stage is 2x2 in-plane (a patch under 48 in-plane; probed with torch 2.13 on AVX512-BF16):
            # such patches train in fp32
            self.amp_dtype = None
            self.tracker.emit({"event": "warning", "message": "patch too small in-plane for bf16 on this CPU: "
                               "training in fp32"})
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        if cfg.amp and self.device.type == "cuda" and self.amp_dtype is not torch.bfloat16:
            self.tracker.emit({"event": "warning", "message": f"this GPU has no native bf16: training in "
                               f"{amp_description(self.amp_dtype)}"})

    # --- helpers -------------------------------------------------------------------------------------
    @contextmanager
    def autocast(self):
        with device_autocast(self.device, self.cfg.amp, self.amp_dtype):
            yield

    def exported_network(self) -> nn.Module:
        """The network for ``model.pt``: a copy of the teacher or the student (``export_weights``; the
        student in supervised mode), see training/export.py.  The student's BatchNorm statistics were
        gathered with dropout on and on augmented (in ACTION++ mixed) images, so they are re-estimated
        on clean training images (``export_bn_batches``); a teacher that ran without dropout on clean
        views keeps its own.  The run's own networks and generators are untouched."""
        use_teacher = self.cfg.mode == "actionpp" and self.cfg.export_weights == "teacher"
        batches = recalibration_batches(self.cfg, use_teacher)
        if batches > 0:
            self.tracker.emit({"event": "stage", "stage": "export", "phase": "export", "total": batches})
        return export_network(self.cfg, self.teacher if use_teacher else self.student, self.batches, self.autocast,
                              teacher=use_teacher)

    def _optimizer_for(self, phase: Phase) -> torch.optim.Optimizer:
        params = list(self.student.parameters())
        if phase.name in ("warmup", "joint"):
            params += self.isd.student_parameters()
        elif phase.name == "finetune":
            params += list(self.ft.q_rep.parameters())
        nesterov = phase.name in ("finetune", "supervised") and self.cfg.finetune_nesterov
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum,
                               weight_decay=self.cfg.weight_decay, nesterov=nesterov)

    def _overall(self) -> int:
        return sum(p.iterations for p in self.phases[: self.phase_index]) + self.iteration

    def _stage_position(self) -> tuple[int, int]:
        phase = self.phases[self.phase_index]
        same = [p for p in self.phases if p.stage == phase.stage]
        before = sum(p.iterations for p in self.phases[: self.phase_index] if p.stage == phase.stage)
        return before + self.iteration, sum(p.iterations for p in same)

    def temperatures(self, phase: Phase, t: int) -> dict[str, float]:
        cfg = self.cfg
        if phase.name == "warmup":
            return {"student": cfg.warmup_tau_student, "teacher": cfg.warmup_tau_teacher}
        if phase.name == "supervised":
            return {}
        tau = ats_temperature(t, phase.iterations, cfg.tau_min, cfg.tau_max, cfg.ats_periods)
        if phase.name == "joint":
            return {"student": tau, "teacher": tau}
        return {"anco": tau, "saacl": tau}

    def ema_decay(self, phase: Phase, t: int) -> float:
        """Teacher EMA decay after iteration ``t`` (0-based) of ``phase`` (see ``Config.ema_warmup``)."""
        decay = self.cfg.ema_decay
        if phase.name == "finetune":
            if self.cfg.ema_horizon_fraction > 0:
                decay = min(decay, 1.0 - 1.0 / (1.0 + self.cfg.ema_horizon_fraction * phase.iterations))
            if self.cfg.ema_warmup:
                decay = min(decay, 1.0 - 1.0 / (t + 2.0))
        return decay

    def rampup(self, phase: Phase, t: int) -> float:
        """Weight of the unsupervised and contrastive terms at fine-tuning iteration ``t`` (0-based)."""
        return sigmoid_rampup(t, int(round(self.cfg.rampup_fraction * phase.iterations)))

    def _pseudo_label_report(self, keys: list[str], values: list[float]) -> dict[str, Any] | None:
        """Diagnostics for the progress event: class shares of labeled pixels and of the pseudo-labels
        that pass the mask (by class name), and the share of unlabeled pixels that pass it."""
        if not keys:
            return None
        names = self.cfg.class_names
        out: dict[str, Any] = {}
        pos = 0
        for key in keys:
            if key in ("mask_fraction", "teacher_dice"):
                out[key] = values[pos]
                pos += 1
            else:
                out[key] = dict(zip(names, values[pos : pos + len(names)]))
                pos += len(names)
        return out

    # --- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "phase_index": self.phase_index,
            "phase": self.phases[self.phase_index].name if self.phase_index < len(self.phases) else "done",
            "iteration": self.iteration,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "isd": self.isd.state_dict(),
            "ft": self.ft.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            **self._rng_state(),
            "world_size": dist_utils.world_size(),
            "dataset": getattr(self, "dataset_fingerprint", None),  # run_folder: --resume on other data is refused
        }

    def _rng_state(self) -> dict[str, Any]:
        return {
            "host_gen": self.host_gen.get_state(),
            "dev_gen": self.dev_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        self.host_gen.set_state(state["host_gen"])
        self.dev_gen.set_state(state["dev_gen"].to(self.dev_gen.get_state().device))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.isd.load_state_dict(state["isd"])
        self.ft.load_state_dict(state["ft"])
        self.phase_index = int(state["phase_index"])
        self.iteration = int(state["iteration"])
        if self.phase_index < len(self.phases):
            self.optimizer = self._optimizer_for(self.phases[self.phase_index])
            if state.get("optimizer") is not None and self.iteration > 0:
                self.optimizer.load_state_dict(state["optimizer"])
        same_world = int(state.get("world_size", 1)) == dist_utils.world_size()
        if same_world:  # RNG streams are per rank (a distributed checkpoint holds every rank's in rank_rng)
            self._set_rng_state(state["rank_rng"][dist_utils.rank()] if "rank_rng" in state else state)
        else:  # another number of ranks: fresh per-rank streams, seeded from the position (no replayed batches)
            seed = self.cfg.seed + 7919 * (self._overall() + 1) + 104729 * dist_utils.rank()
            torch.manual_seed(seed)
            self.host_gen.manual_seed(seed + 1)
            self.dev_gen.manual_seed(seed + 2)

    def save(self, name: str = CHECKPOINT_NAME) -> Path | None:
        """Write a checkpoint (rank 0 only; every rank must call this: it synchronises the ranks)."""
        if self.sync_buffers is not None:
            self.sync_buffers()
        self._check_finite(weights=True)
        rank_rng = dist_utils.all_gather_object(self._rng_state()) if dist_utils.is_distributed() else None
        if not dist_utils.is_main_process():
            return None
        state = self.state_dict()
        if rank_rng is not None:
            state["rank_rng"] = rank_rng
        path = save_checkpoint(self.out_dir / name, state)
        stage_it, _ = self._stage_position() if self.phase_index < len(self.phases) else (self.iteration, 0)
        self.tracker.emit({"event": "checkpoint", "path": str(path),
                           "stage": self.phases[min(self.phase_index, len(self.phases) - 1)].stage,
                           "iteration": stage_it})
        return path

    def _check_finite(self, weights: bool = False) -> None:
        if weights:  # BN hides exploding weights from the loss: check the parameters before saving them
            tensors = [t for t in self.student.state_dict().values() if t.is_floating_point()]  # BN stats too
            finite = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
            self._bad |= ~finite
        if dist_utils.any_rank(self._bad):  # every rank stops together
            phase = self.phases[min(self.phase_index, len(self.phases) - 1)]
            raise TrainingError(
                f"the loss or the weights became NaN or Inf during {phase.name} (around iteration {self.iteration}); "
                f"training stopped and the last good checkpoint {self.out_dir / CHECKPOINT_NAME} was kept. "
                "Try a lower learning rate (--set lr=0.005) or check the input intensities.")

    # --- the loop ----------------------------------------------------------------------------------------
    def _begin_phase(self, phase: Phase) -> None:
        if phase.name == "finetune":
            # spec 1: student and teacher both start from the pre-trained student
            self.teacher.load_state_dict(self.student.state_dict())
            self.ft.k_rep.load_state_dict(self.ft.q_rep.state_dict())
        self.optimizer = self._optimizer_for(phase)

    def prepare(self) -> None:
        """Build the step functions and set the train/eval modes (called by :meth:`run`)."""
        cfg = self.cfg
        self._steps = {
            "pretrain": PretrainStep(cfg, self.train_student, self.teacher, self.isd),
            "finetune": FinetuneStep(cfg, self.train_student, self.teacher, self.ft),
            "supervised": SupervisedStep(cfg, self.train_student),
        }
        self.student.train()
        self.teacher.train()  # D13: teacher in train() mode (batch statistics) ...
        if not cfg.teacher_dropout:  # ... with its dropout off unless asked for (Config.teacher_dropout)
            for module in self.teacher.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd):
                    module.eval()

    def step_once(self, phase: Phase) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        """One iteration of ``phase`` at ``self.iteration``: step, backward, SGD, EMA (no logging, no
        host sync).  Returns ``(loss, parts, diagnostics, temperatures)``; the caller advances the
        iteration and the learning rate."""
        cfg = self.cfg
        temps = self.temperatures(phase, self.iteration)
        diagnostics: dict[str, torch.Tensor] = {}
        if phase.name in ("warmup", "joint"):
            loss, parts = self._steps["pretrain"](self.batches, self.host_gen, self.dev_gen, temps["student"],
                                                  temps["teacher"], phase.name == "joint", self.autocast)
        elif phase.name == "finetune":
            loss, parts, diagnostics = self._steps["finetune"](self.batches, self.host_gen, self.dev_gen,
                                                               temps["anco"], self.autocast,
                                                               self.rampup(phase, self.iteration))
        else:
            loss, parts = self._steps["supervised"](self.batches, self.host_gen, self.dev_gen, self.autocast)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()  # fp16: scaled loss
        if self.sync_gradients is not None:
            self.sync_gradients()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip (and step) on the true gradients
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        if self.scaler is None:
            self.optimizer.step()
        else:  # skips the step when fp16 gradients overflowed, then adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        with torch.no_grad():
            if phase.name != "supervised":
                decay = self.ema_decay(phase, self.iteration)
                ema_update(self.teacher, self.student, decay)
                (self.isd if phase.name != "finetune" else self.ft).ema(decay)
            self._bad |= ~torch.isfinite(loss.detach())
        return loss, parts, diagnostics, temps

    def run(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Train to the end (returns False) or until ``should_stop()`` (checkpoint saved, returns True)."""
        cfg = self.cfg
        self.prepare()
        while self.phase_index < len(self.phases):
            phase = self.phases[self.phase_index]
            if phase.iterations == 0:
                self.phase_index += 1
                continue
            if self.iteration == 0 or self.optimizer is None:
                self._begin_phase(phase)
            stage_it, stage_total = self._stage_position()
            self.tracker.emit({"event": "stage", "stage": phase.stage, "phase": phase.name, "total": stage_total,
                               "iteration": stage_it})
            self.tracker.start_window(self._overall())
            sums: dict[str, torch.Tensor] = {}
            diag_sums: dict[str, torch.Tensor] = {}
            count = 0
            while self.iteration < phase.iterations:
                if should_stop is not None and should_stop():
                    self.save()
                    return True
                t = self.iteration + 1
                lr = self.optimizer.param_groups[0]["lr"]
                loss, parts, diagnostics, temps = self.step_once(phase)
                with torch.no_grad():
                    for key, value in diagnostics.items():
                        diag_sums[key] = diag_sums.get(key, 0) + value.detach().float()
                    for key, value in {"total": loss, **parts}.items():
                        sums[key] = sums.get(key, 0) + value.detach().float()
                count += 1
                set_lr(self.optimizer, poly_lr(cfg.lr, t, phase.iterations, cfg.poly_power))
                self.iteration = t
                if t % cfg.log_every == 0 or t == phase.iterations:
                    self._check_finite(weights=True)
                    keys = list(sums)
                    diag_keys = list(diag_sums)
                    flat = [sums[k].reshape(1) for k in keys] + [diag_sums[k].reshape(-1) for k in diag_keys]
                    means = dist_utils.all_reduce_mean(torch.cat(flat).div(count))  # over ranks
                    values = means.tolist()  # the one sync per window
                    stage_it, stage_total = self._stage_position()
                    self.tracker.progress(stage=phase.stage, phase=phase.name, iteration=stage_it, total=stage_total,
                                          overall_iteration=self._overall(), losses=dict(zip(keys, values)),
                                          lr=lr, temperature=temps,
                                          pseudo_labels=self._pseudo_label_report(diag_keys, values[len(keys):]))
                    sums, diag_sums, count = {}, {}, 0
                if t % cfg.checkpoint_every == 0 and t < phase.iterations:
                    self.save()
            # phase complete
            if phase.name == "joint" or (phase.name == "warmup" and self.cfg.pretrain_joint_iterations == 0):
                self.save(PRETRAIN_CHECKPOINT_NAME)
            self.phase_index += 1
            self.iteration = 0
            self.optimizer = None
            self.save()
        return False


def _load_init_weights(trainer: Trainer, init_model: Path) -> None:
    from ..model_io import load_model

    model, model_cfg = load_model(init_model, device="cpu", expect_preset=trainer.cfg.preset,
                                  expect_classes=trainer.cfg.num_classes)
    try:
        trainer.student.load_state_dict(model.state_dict())
    except RuntimeError as exc:  # another network size (e.g. base_channels)
        raise ModelFileError(f"cannot warm-start from {init_model}: its network does not match this config ({exc})") from exc
    trainer.teacher.load_state_dict(model.state_dict())


def _cached_pretraining(cfg: Config, labeled: list[Case], unlabeled: list[Case], callback: Callback | None,
                        should_stop: Callable[[], bool] | None, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The pre-trained student for these images and settings (training/pretrain_cache.py): read from the
    cache, or pre-trained now in the entry's work folder (resuming a run cut off there) and stored.
    None when ``should_stop`` stopped pre-training."""
    from .pretrain_cache import CacheEntry, pretraining_config

    def emit(event: dict[str, Any]) -> None:
        if callback is not None and dist_utils.is_main_process():
            callback(event)

    entry = CacheEntry(cfg, labeled, unlabeled)
    student, problem = entry.read()
    if problem is not None:
        emit({"event": "warning", "message": problem})
    if student is not None:
        emit({"event": "pretraining", "cached": True, "path": str(entry.path), "iterations": entry.iterations})
        return student
    resume = (entry.work / CHECKPOINT_NAME).is_file()
    emit({"event": "pretraining", "cached": False, "path": str(entry.path), "iterations": entry.iterations,
          "resumed": resume})
    result = train(pretraining_config(cfg), labeled, unlabeled, entry.work, callback=callback, resume=resume,
                   overwrite=not resume, should_stop=should_stop, device=device, export=False)
    if result.stopped:
        return None
    return entry.store(entry.work / CHECKPOINT_NAME, len(labeled), len(unlabeled))


def train(cfg: Config, labeled: list[Case], unlabeled: list[Case], out_dir: str | Path,
          callback: Callback | None = None, resume: bool | str | Path = False, init_model: str | Path | None = None,
          should_stop: Callable[[], bool] | None = None, device: torch.device | None = None,
          overwrite: bool = False, export: bool = True) -> TrainResult:
    """Train ACTION++ (or the supervised baseline) and write ``model.pt`` into ``out_dir``.

    ``resume`` (True = ``out_dir/checkpoint.pt``, or a path) continues an interrupted run exactly;
    ``init_model`` warm-starts the network from a previous model (the annotate-train-predict loop);
    ``should_stop`` is polled every iteration (the worker's SIGTERM flag): the run then saves a checkpoint
    and returns with ``stopped=True``.  Bad input raises :class:`DataError` before any training.
    A folder that holds a run is refused unless ``resume`` or ``overwrite`` (training/run_folder.py).
    With ``pretrain_cache_iterations`` > 0 a fresh ACTION++ run (no resume, no ``init_model``) starts
    fine-tuning from the cached pre-training of its images, pre-training first when there is none
    (training/pretrain_cache.py).  ``export=False`` writes no ``model.pt`` (the cache's own runs).
    """
    from ..data.validation import validate_training_cases
    from ..model_io import save_model
    from . import run_folder

    out_dir = Path(out_dir)
    check_writable_dir(out_dir)
    warnings = validate_training_cases(labeled, unlabeled, cfg, require_unlabeled=cfg.mode == "actionpp")
    if cfg.mode == "actionpp":
        warnings = warnings + list(cfg.phase_lengths().notes)  # budget too small for a phase
    for message in warnings:
        if callback is not None and dist_utils.is_main_process():
            callback({"event": "warning", "message": message})
    run = run_folder.RunFolder(out_dir, resume=bool(resume), overwrite=overwrite)
    run.claim()  # refuses a folder holding a run, locks it, removes orphaned temp files
    try:
        checkpoint_path = out_dir / CHECKPOINT_NAME
        fingerprint = run_folder.dataset_fingerprint(labeled, unlabeled)
        resume_path: Path | None = None
        if resume:
            resume_path = checkpoint_path if resume is True else Path(resume)
            state = load_checkpoint(resume_path, map_location="cpu")
            saved = Config.from_dict(state["config"])
            # the user may change runtime options on resume, not the method
            runtime = {"device", "log_every", "checkpoint_every", "num_threads"}
            diff = [k for k, v in saved.to_dict().items() if k not in runtime and cfg.to_dict()[k] != v]
            if diff:
                raise DataError(f"cannot resume from {resume_path}: the config differs in {', '.join(diff)}")
            run_folder.check_resume_data(state, fingerprint, resume_path)
        trainer = Trainer(cfg, labeled, unlabeled, out_dir, callback, device=device)
        trainer.dataset_fingerprint = fingerprint
        if dist_utils.is_distributed():
            from .distributed_setup import wrap_for_ddp

            wrap_for_ddp(trainer)
            if should_stop is not None:
                should_stop = dist_utils.agreed(should_stop)  # all ranks stop at the same iteration
        if resume_path is not None:
            trainer.load_state_dict(load_checkpoint(resume_path, map_location="cpu"))
        elif init_model is not None:
            _load_init_weights(trainer, Path(init_model))
        elif cfg.mode == "actionpp" and cached_pretraining_iterations(cfg) > 0:
            pretrained = _cached_pretraining(cfg, labeled, unlabeled, callback, should_stop, trainer.device)
            if pretrained is None:  # stopped while pre-training: its own checkpoint resumes next time
                return TrainResult(None, checkpoint_path, out_dir / "config.json", True, 0, warnings)
            if cfg.pretrain_transfer == "encoder":  # the decoder keeps its fresh weights
                pretrained = {**trainer.student.state_dict(), **encoder_state(trainer.student, pretrained)}
            trainer.student.load_state_dict(pretrained)
            trainer.teacher.load_state_dict(pretrained)
            torch.manual_seed(cfg.seed + dist_utils.rank())  # as if read from the cache: the same run either way
        config_path = run.accept(cfg)  # accepted: only now is config.json (re)written
        try:
            stopped = trainer.run(should_stop)
        except TrainingError as exc:
            raise run.training_error(exc) from exc
        model_path = None
        if export and not stopped and dist_utils.is_main_process():
            model_path = save_model(out_dir / MODEL_NAME, trainer.exported_network(), cfg, iterations=trainer.tracker.overall_total,
                                    dataset=fingerprint, labeled_cases=len(labeled), unlabeled_cases=len(unlabeled),
                                    device=str(trainer.device), mode=cfg.mode)
        dist_utils.barrier()
    finally:
        run.release()
    return TrainResult(model_path, checkpoint_path, config_path, stopped, trainer._overall(), warnings)
