"""Pre-training run once per set of images and settings, reused by every later run (``pretrain_cache_iterations``).

ACTION++'s first stage (global and local instance discrimination, spec 5) costs as much as fine-tuning.
Laid out inside a short budget it took iterations from fine-tuning and was dropped below ~2,100
iterations.  Cached, it is paid once: the annotate-train-predict loop, a warm retrain with other
settings of fine-tuning, or a retrain with one more labeled case start their fine-tuning from the same
pre-trained student.

The cache key is the *images* (labeled and unlabeled together, order-free, labels left out) plus every
setting that shapes pre-training (:data:`PRETRAIN_KEYS`) and the number of iterations.  Labels are left
out on purpose: the joint phase's supervised term uses the labels known when the cache entry was
made, and labelling one more of the same images does not make that representation stale.  An entry
stores the student (fine-tuning starts student and teacher from it, spec 1) and what it was made from.

A pre-training run cut off (cancel, crash) resumes from its own checkpoint in ``<key>.work/`` the next
time any run asks for the same entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..budget import cached_pretraining_iterations
from ..data.types import Case
from ..errors import ModelFileError
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["PRETRAIN_KEYS", "CacheEntry", "cache_folder", "cache_key", "images_fingerprint", "pretraining_config"]

# every Config field that changes what pre-training computes (models/, pretrain.py, batches.py, loop.py)
PRETRAIN_KEYS = (
    "preset", "dim", "num_classes", "patch_size", "normalization", "pretrain_labeled_batch",
    "pretrain_unlabeled_batch", "lr", "momentum", "weight_decay", "poly_power", "ema_decay", "teacher_dropout",
    "base_channels", "latent_dim", "local_pool", "local_window", "local_stride", "local_window_depth",
    "local_stride_depth", "isd_queue_size", "warmup_tau_student", "warmup_tau_teacher", "weight_global",
    "weight_local", "local_intended_reshape", "tau_min", "tau_max", "ats_periods", "geometric_augmentation",
    "intensity_augmentation", "jitter_strength", "grad_clip", "seed", "amp", "cpu_bf16", "pretrain_cache_iterations",
    "pretrain_cache_joint_share", "weight_dense", "dense_temperature", "representation_dim",
)

ENTRY_FORMAT = "actionpp-pretrained"


def cache_folder(cfg) -> Path:
    """``pretrain_cache_dir``, else ``$ACTIONPP_CACHE_DIR/pretrain``, else the user's cache folder."""
    if cfg.pretrain_cache_dir:
        return Path(cfg.pretrain_cache_dir).expanduser()
    if os.environ.get("ACTIONPP_CACHE_DIR"):
        return Path(os.environ["ACTIONPP_CACHE_DIR"]).expanduser() / "pretrain"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ACTIONPlusPlus" / "pretrain"


def images_fingerprint(cases: Sequence[Case]) -> str:
    """A digest of the images alone, independent of their order and of which ones are labeled."""
    digests = []
    for case in cases:
        image = np.ascontiguousarray(case.image)
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{image.shape}|{image.dtype}|".encode())
        h.update(memoryview(image).cast("B"))
        digests.append(h.hexdigest())
    return hashlib.blake2b("|".join(sorted(digests)).encode(), digest_size=16).hexdigest()


def cache_key(cfg, labeled: Sequence[Case], unlabeled: Sequence[Case]) -> str:
    settings = {k: getattr(cfg, k) for k in PRETRAIN_KEYS}
    settings["pretrain_cache_iterations"] = cached_pretraining_iterations(cfg)  # -1 (automatic) resolved
    text = json.dumps({"images": images_fingerprint([*labeled, *unlabeled]), "settings": settings}, sort_keys=True)
    return f"{cfg.preset}-{hashlib.blake2b(text.encode(), digest_size=12).hexdigest()}"


def pretraining_config(cfg):
    """The config of the pre-training run behind a cache entry: the two pre-training phases only."""
    n = cached_pretraining_iterations(cfg)
    warmup = int(n * (1.0 - float(cfg.pretrain_cache_joint_share)) + 1e-9)  # 10 * (1 - 0.9) is 0.999...
    return cfg.replace(budget_iterations=0, pretrain_warmup_iterations=warmup, pretrain_joint_iterations=n - warmup,
                       finetune_iterations=0, pretrain_cache_iterations=0, checkpoint_every=min(cfg.checkpoint_every, 250))


class CacheEntry:
    """One entry: ``<key>.pt`` (the stored student) and ``<key>.work/`` (its pre-training run while it runs)."""

    def __init__(self, cfg, labeled: Sequence[Case], unlabeled: Sequence[Case]) -> None:
        folder = cache_folder(cfg)
        key = cache_key(cfg, labeled, unlabeled)
        self.path = folder / f"{key}.pt"
        self.work = folder / f"{key}.work"
        self.iterations = cached_pretraining_iterations(cfg)

    def read(self) -> tuple[dict[str, torch.Tensor] | None, str | None]:
        """``(student state dict, None)``, or ``(None, why not)`` when there is none or it is unusable."""
        if not self.path.is_file():
            return None, None
        try:
            return load_checkpoint(self.path)["student"], None
        except (ModelFileError, KeyError) as exc:
            return None, f"the cached pre-training {self.path} is unusable ({exc}); pre-training again"

    def store(self, checkpoint: Path, labeled_cases: int, unlabeled_cases: int) -> dict[str, torch.Tensor]:
        """Keep the student of the finished pre-training run's ``checkpoint`` (atomically) and drop the run."""
        state = load_checkpoint(checkpoint)
        save_checkpoint(self.path, {"format_entry": ENTRY_FORMAT, "student": state["student"], "config": state["config"],
                                    "iterations": self.iterations, "labeled_cases": labeled_cases,
                                    "unlabeled_cases": unlabeled_cases})
        shutil.rmtree(self.work, ignore_errors=True)
        return state["student"]
