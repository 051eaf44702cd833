"""Training-step benchmark: iterations per second and peak memory for each preset and stage.

    .venv/bin/python bench/train_step.py                 # reduced CPU shapes (default on CPU)
    .venv/bin/python bench/train_step.py --shape real    # the presets' real shapes (GPU advised)
    .venv/bin/python bench/train_step.py --device cuda --shape both

Random data of the right shapes; the numbers measure the full step (sampling, augmentation, forward,
losses, backward, SGD, EMA, queue updates), with the loop's one host sync per logged window.  Each stage
is printed next to a supervised-only step (the baseline's) at the same per-arm labeled batch and shape,
and the ratio of the two (the supervised step is scaled linearly when the stage's labeled batch differs,
e.g. LA pre-training 1+1 against the 2-image supervised step).

``--profile N`` profiles N fine-tuning and N supervised steps after the timing and prints, per
step, the wall time, the time the GPU spent in kernels and the host's time in operators, then the
operators that take the most GPU time: a wall time well above the kernel time means the step is bound
by the host (launches, syncs), not by the GPU.

``--compile MODE`` compiles the student and the teacher in place (``nn.Module.compile``, torch.compile's
``default``, ``reduce-overhead`` (CUDA graphs) or ``max-autotune-no-cudagraphs``) before the warm-up
iterations: a trial of fewer launches per step for the host-bound ACDC step on a GPU; the product does
not compile (not measured yet).

``--op-sites`` prints, for one fine-tuning step, the operators the dispatcher runs grouped by the
function of ACTIONPlusPlusLib that called them (the backward counts where ``backward()`` is called),
to show which parts of the method issue the launches.

``--ops`` also prints the operator calls of one step of each stage (top-level ATen calls, the torch
profiler's count; on the CPU also as the CUDA path runs the step): on a GPU each is at least one kernel
launch, so a step of small tensors can be bound by their host-side cost before it is bound by the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ACTIONPlusPlusLib.config import preset  # noqa: E402
from ACTIONPlusPlusLib.data.types import Case  # noqa: E402
from ACTIONPlusPlusLib.device import amp_description, resolve_device  # noqa: E402
from ACTIONPlusPlusLib.training.loop import Trainer  # noqa: E402

REDUCED = {
    "acdc": dict(patch_size=[64, 64], local_window=16, local_stride=8, local_pool=4),
    "la": dict(patch_size=[48, 48, 32], local_window=16, local_stride=8, local_pool=4, local_window_depth=16, local_stride_depth=8),
}

#: ``--set KEY=VALUE`` config values for every stage's trainer (the supervised reference's too)
SETTINGS: dict[str, str] = {}


def _cases(cfg, n: int, labeled: bool, rng: np.random.Generator) -> list[Case]:
    size = [s + 16 for s in cfg.patch_size]
    shape = (1, size[0], size[1]) if cfg.dim == 2 else (size[2], size[1], size[0])
    out = []
    for i in range(n):
        image = rng.standard_normal(shape).astype(np.float32)
        label = None
        if labeled:
            label = np.zeros(shape, np.uint8)
            zz, yy, xx = np.indices(shape)
            for c in range(1, cfg.num_classes):
                r = (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2 - 6 * c) ** 2
                label[r < (shape[1] / (3 + c)) ** 2] = c
        out.append(Case(f"{'l' if labeled else 'u'}{i}", image, label))
    return out


def _trainer(name: str, shape: str, device: torch.device, phase: str, tmp: str, compile_mode: str | None = None) -> Trainer:
    overrides = dict(REDUCED[name]) if shape == "reduced" else {}
    counts = {"pretrain_warmup_iterations": 0, "pretrain_joint_iterations": 0, "finetune_iterations": 0}
    if phase == "supervised":
        counts["finetune_iterations"] = 10**6
        overrides["mode"] = "supervised"
    else:
        key = {"warmup": "pretrain_warmup_iterations", "joint": "pretrain_joint_iterations", "finetune": "finetune_iterations"}[phase]
        counts[key] = 10**6
    cfg = preset(name, **overrides, **counts, checkpoint_every=10**9, device=str(device))
    if SETTINGS:
        cfg = cfg.replace(**SETTINGS)
    rng = np.random.default_rng(0)
    trainer = Trainer(cfg, _cases(cfg, 4, True, rng), _cases(cfg, 8, False, rng), Path(tmp) / phase)
    trainer.prepare()
    trainer.phase_index = next(i for i, p in enumerate(trainer.phases) if p.iterations)
    trainer._begin_phase(trainer.phases[trainer.phase_index])
    if compile_mode:
        for network in {id(m): m for m in (trainer.train_student, trainer.teacher)}.values():
            network.compile(mode=compile_mode)
    return trainer


@contextlib.contextmanager
def _as_on_cuda(trainer: Trainer, active: bool = True):
    """On the CPU, run what the CUDA path runs where the two differ: the optimiser's ``foreach`` kernels
    (torch's default on CUDA) instead of a loop over tensors, and AnCo's and SAACL's contrast in one chunk
    instead of cache-sized ones."""
    from unittest import mock

    from ACTIONPlusPlusLib.losses import anco, saacl

    with contextlib.ExitStack() as stack:
        if active:
            contrast = anco.indexed_contrast
            stack.enter_context(mock.patch.object(
                anco, "indexed_contrast", lambda q, p, r, i, t, chunk=None, row_scale=None:
                contrast(q, p, r, i, t, chunk=max(1, i.shape[0]), row_scale=row_scale)))
            stack.enter_context(mock.patch.object(
                saacl, "logsumexp_matmul", lambda a, keys: saacl._LogSumExpMatmul.apply(a, keys.detach(), keys.shape[0])))
            for group in trainer.optimizer.param_groups:
                stack.enter_context(mock.patch.dict(group, {"foreach": True}))
        yield


def _operator_calls(trainer: Trainer, as_on_cuda: bool = False) -> int:
    """Top-level ATen operator calls of one ``step_once`` (forward, backward, optimiser, EMA).

    ``as_on_cuda``: count on the CPU what the CUDA path runs, whose choices differ in two places: the
    optimiser's ``foreach`` kernels (torch's default on CUDA) instead of a loop over tensors, and AnCo's
    and SAACL's contrast in one chunk instead of cache-sized ones.
    """
    from torch.profiler import ProfilerActivity, profile

    with _as_on_cuda(trainer, as_on_cuda):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.step_once(trainer.phases[trainer.phase_index])
    trainer.iteration += 1
    return sum(1 for e in prof.events()
               if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))


def _profile_steps(trainer: Trainer, steps: int, label: str) -> None:
    """Wall time against GPU kernel time per step over ``steps`` profiled steps (kernel time 0 on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    device = trainer.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            trainer.step_once(trainer.phases[trainer.phase_index])
            trainer.iteration += 1
        _sync(device)
        wall = (time.perf_counter() - started) / steps
    from torch.autograd import DeviceType

    averages = prof.key_averages()
    # The device's own events (kernels, copies), as the table's "Self CUDA time total" counts them: the
    # ATen operators that launched them report the same time again, so summing every row counts it twice.
    on_device = [e for e in averages if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    kernel_ms = sum(e.self_device_time_total for e in on_device) / 1000 / steps
    kernels = sum(e.count for e in on_device) / steps
    print(f"-- profile {label}: wall {wall * 1000:.1f} ms/step under the profiler, GPU {kernel_ms:.1f} ms/step in "
          f"{kernels:.0f} kernels and copies; GPU busy {100 * kernel_ms / (wall * 1000):.0f} % of the wall time",
          flush=True)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=18, max_name_column_width=48), flush=True)


def _operator_sites(trainer: Trainer, top: int = 25) -> None:
    """Operators of one ``step_once`` as the dispatcher sees them (after autograd, so the backward's too),
    counted per calling function of ACTIONPlusPlusLib (innermost frame); on the CPU as the CUDA path runs
    the step (:func:`_as_on_cuda`)."""
    import collections
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    sites: collections.Counter[str] = collections.Counter()

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            frames = [f for f in traceback.extract_stack() if f"ACTIONPlusPlusLib{os.sep}" in f.filename]
            if frames:
                module = frames[-1].filename.split(f"ACTIONPlusPlusLib{os.sep}")[-1]
                sites[f"{module} {frames[-1].name}"] += 1
            else:
                sites["(no ACTIONPlusPlusLib frame)"] += 1
            return func(*args, **(kwargs or {}))

    with _as_on_cuda(trainer, trainer.device.type == "cpu"), _Count():
        trainer.step_once(trainer.phases[trainer.phase_index])
    trainer.iteration += 1
    groups: collections.Counter[str] = collections.Counter()
    for site, count in sites.items():
        groups[site.split(" ")[0]] += count
    print(f"-- dispatched operators of one {trainer.phases[trainer.phase_index].name} step: {sum(sites.values())}")
    print("   per file: " + ", ".join(f"{g} {c}" for g, c in groups.most_common()))
    for site, count in sites.most_common(top):
        print(f"   {count:5d}  {site}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(name: str, shape: str, device: torch.device, iters: int, warm: int, rounds: int = 3,
          count_ops: bool = False, profile_steps: int = 0, compile_mode: str | None = None,
          phases: tuple[str, ...] = ("warmup", "joint", "finetune", "supervised"), op_sites: bool = False) -> list[str]:
    """Each stage's step next to a supervised step at the same per-arm batch and shape, and the ratio.

    The stages are timed in interleaved rounds (``iters`` iterations of each stage per round, best round
    kept), so that a busy machine slows them alike; ``Trainer.step_once`` is the loop's own iteration.
    """
    phases = tuple(p for p in ("warmup", "joint", "finetune") if p in phases) + ("supervised",)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {phase: _trainer(name, shape, device, phase, tmp, compile_mode) for phase in phases}
        best = {phase: float("inf") for phase in phases}
        peaks = {}
        for phase, trainer in trainers.items():  # warm-up iterations (allocator, kernels, queues)
            for _ in range(warm):
                trainer.step_once(trainer.phases[trainer.phase_index])
                trainer.iteration += 1
        for _ in range(rounds):
            for phase, trainer in trainers.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                _sync(device)
                started = time.perf_counter()
                for _ in range(iters):
                    trainer.step_once(trainer.phases[trainer.phase_index])
                    trainer.iteration += 1
                _sync(device)
                best[phase] = min(best[phase], (time.perf_counter() - started) / iters)
                if device.type == "cuda":
                    peaks[phase] = torch.cuda.max_memory_allocated(device) / 2**30
        ops = {}
        if count_ops:
            for phase, trainer in trainers.items():
                ops[phase] = f"  {_operator_calls(trainer)} operator calls/step"
                if device.type == "cpu":
                    ops[phase] += f" ({_operator_calls(trainer, as_on_cuda=True)} as the CUDA path runs it)"
        if op_sites:
            for phase in [p for p in ("finetune", "supervised") if p in trainers]:
                _operator_sites(trainers[phase])
        if profile_steps:
            for phase in [p for p in ("finetune", "supervised") if p in trainers]:
                _profile_steps(trainers[phase], profile_steps, f"{name} {shape} {phase}")
    lines = []
    sup_seconds = best["supervised"]
    for phase in phases:
        cfg = trainers[phase].cfg
        seconds = best[phase]
        if phase == "supervised":
            per_arm, batch = cfg.finetune_labeled_batch, f"{cfg.finetune_labeled_batch}+0"
        elif phase == "finetune":
            per_arm, batch = cfg.finetune_labeled_batch, f"{cfg.finetune_labeled_batch}+{cfg.finetune_unlabeled_batch}"
        else:
            per_arm, batch = cfg.pretrain_labeled_batch, f"{cfg.pretrain_labeled_batch}+{cfg.pretrain_unlabeled_batch}"
        ref = sup_seconds * (per_arm / cfg.finetune_labeled_batch)  # the supervised step at this per-arm batch
        mem = (f"peak GPU memory {peaks[phase]:.2f} GiB" if device.type == "cuda"
               else f"peak process RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
        lines.append(f"{name:4s} {shape:7s} patch {'x'.join(map(str, cfg.patch_size)):10s} batch {batch:4s} {phase:10s} "
                     f"{1 / seconds:7.2f} it/s ({seconds * 1000:8.1f} ms/it)  vs supervised step {ref * 1000:7.1f} ms: "
                     f"ratio {seconds / ref:5.2f}  {mem}  {amp_description(trainers[phase].amp_dtype)}" + ops.get(phase, ""))
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", choices=["reduced", "real", "both"], default=None)
    parser.add_argument("--presets", default="acdc,la")
    parser.add_argument("--iterations", type=int, default=5, help="iterations per stage per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=2)
    parser.add_argument("--ops", action="store_true", help="also count the operator calls of one step per stage")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile N fine-tuning and N supervised steps (wall vs GPU kernel time, top operators)")
    parser.add_argument("--op-sites", action="store_true",
                        help="count one fine-tuning (and supervised) step's dispatched operators per calling function")
    parser.add_argument("--compile", default=None, choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="torch.compile the student and teacher in place (a trial; the product does not compile)")
    parser.add_argument("--phases", default="warmup,joint,finetune,supervised",
                        help="which stages to time (supervised is always timed: it is the reference)")
    parser.add_argument("--acdc-size", type=int, default=64, help="ACDC patch edge for the reduced shape (64, 128)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config value for every stage, the supervised step's included "
                             "(e.g. cpu_channels_last=false to time the channels-first networks)")
    args = parser.parse_args()
    SETTINGS.update(kv.split("=", 1) for kv in args.set)
    REDUCED["acdc"]["patch_size"] = [args.acdc_size, args.acdc_size]
    device = resolve_device(args.device)
    shapes = {"reduced": ["reduced"], "real": ["real"], "both": ["reduced", "real"]}[args.shape or ("both" if device.type == "cuda" else "reduced")]
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({os.cpu_count()} CPU cores, {torch.get_num_threads()} threads)"))
    for shape in shapes:
        for name in args.presets.split(","):
            bench(name, shape, device, args.iterations, args.warm, args.rounds, args.ops, args.profile, args.compile,
                  tuple(args.phases.split(",")), args.op_sites)


if __name__ == "__main__":
    main()
