"""Training-step benchmark: iterations per second and peak memory for each preset and stage.

    .venv/bin/python bench/train_step.py                 # reduced CPU shapes (default on CPU)
    .venv/bin/python bench/train_step.py --shape real    # the presets' real shapes (GPU advised)
    .venv/bin/python bench/train_step.py --device cuda --shape both

Random data of the right shapes; the numbers measure the full step (sampling, augmentation, forward,
losses, backward, SGD, EMA, queue updates), with the loop's one host sync per logged window.  Each stage
is printed next to a supervised-only step (the baseline's) at the same per-arm labeled batch and shape,
and the ratio of the two (the supervised step is scaled linearly when the stage's labeled batch differs,
e.g. LA pre-training 1+1 against the 2-image supervised step).
"""

from __future__ import annotations

import argparse
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
from ACTIONPlusPlusLib.device import resolve_device  # noqa: E402
from ACTIONPlusPlusLib.training.loop import Trainer  # noqa: E402

REDUCED = {
    "acdc": dict(patch_size=[64, 64], local_window=16, local_stride=8, local_pool=4),
    "la": dict(patch_size=[48, 48, 32], local_window=16, local_stride=8, local_pool=4, local_window_depth=16, local_stride_depth=8),
}


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


def _time_phase(name: str, shape: str, device: torch.device, iters: int, warm: int, phase: str) -> tuple[float, str, object]:
    overrides = dict(REDUCED[name]) if shape == "reduced" else {}
    counts = {"pretrain_warmup_iterations": 0, "pretrain_joint_iterations": 0, "finetune_iterations": 0}
    if phase == "supervised":
        counts["finetune_iterations"] = warm + iters
        overrides["mode"] = "supervised"
    else:
        key = {"warmup": "pretrain_warmup_iterations", "joint": "pretrain_joint_iterations", "finetune": "finetune_iterations"}[phase]
        counts[key] = warm + iters
    cfg = preset(name, **overrides, **counts, log_every=1, checkpoint_every=10**9, device=str(device))
    rng = np.random.default_rng(0)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, _cases(cfg, 4, True, rng), _cases(cfg, 8, False, rng), Path(tmp),
                          callback=lambda e: stamps.append(time.perf_counter()) if e["event"] == "progress" else None)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        trainer.run()
    seconds = (stamps[-1] - stamps[warm - 1]) / iters
    if device.type == "cuda":
        mem = f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    else:
        mem = f"peak process RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
    return seconds, mem, cfg


def bench(name: str, shape: str, device: torch.device, iters: int, warm: int) -> list[str]:
    """Each stage's step next to a supervised step at the same per-arm batch and shape, and the ratio."""
    lines = []
    sup_seconds, _, _ = _time_phase(name, shape, device, iters, warm, "supervised")
    for phase in ("warmup", "joint", "finetune", "supervised"):
        seconds, mem, cfg = (_time_phase(name, shape, device, iters, warm, phase) if phase != "supervised"
                             else (sup_seconds, "", None))
        if cfg is None:
            continue
        per_arm = cfg.finetune_labeled_batch if phase == "finetune" else cfg.pretrain_labeled_batch
        batch = f"{cfg.pretrain_labeled_batch}+{cfg.pretrain_unlabeled_batch}" if phase != "finetune" else f"{cfg.finetune_labeled_batch}+{cfg.finetune_unlabeled_batch}"
        ref = sup_seconds * (per_arm / cfg.finetune_labeled_batch)  # the supervised step at this per-arm batch
        lines.append(f"{name:4s} {shape:7s} patch {'x'.join(map(str, cfg.patch_size)):10s} batch {batch:4s} {phase:8s} "
                     f"{1 / seconds:7.2f} it/s ({seconds * 1000:8.1f} ms/it)  supervised step {ref * 1000:7.1f} ms "
                     f"-> ratio {seconds / ref:5.2f}  {mem}")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", choices=["reduced", "real", "both"], default=None)
    parser.add_argument("--presets", default="acdc,la")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warm", type=int, default=2)
    args = parser.parse_args()
    device = resolve_device(args.device)
    shapes = {"reduced": ["reduced"], "real": ["real"], "both": ["reduced", "real"]}[args.shape or ("both" if device.type == "cuda" else "reduced")]
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({os.cpu_count()} CPU cores, {torch.get_num_threads()} threads)"))
    for shape in shapes:
        for name in args.presets.split(","):
            bench(name, shape, device, args.iterations, args.warm)


if __name__ == "__main__":
    main()
