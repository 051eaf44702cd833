"""Before training: a lower bound of the peak memory a patch and batch need, refused when it exceeds
what the device has (instead of the kernel's out-of-memory killer, with no message and a stale lock).

The estimate runs the network once on the smallest patch it takes (16 voxels per axis), scales to the
configured patch size (nothing of that size is allocated) and adds up the outputs of its layers that a training step keeps for the
backward pass (convolutions, normalisations, activations that are not in place, dropout, pooling),
times the images of the largest batch a step forwards at once.  The backward pass, the heads, the
teacher and the optimiser come on top, so a run whose estimate exceeds the device's whole memory
cannot fit: that is the only case refused (exit 2, with the estimate and the settings to change).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import DataError

GB = 1024**3
DOWNSAMPLING = 16  # the smallest patch the networks take, per axis (config_checks.DOWNSAMPLING)


def activation_bytes_per_image(cfg: Any) -> int | None:
    """Bytes of the layer outputs one training image keeps through the student's forward pass (None
    when the network could not be run).  Measured on the smallest patch the network takes (16 per axis,
    milliseconds on a CPU) and scaled by the voxels: every layer's output is the patch divided by a
    power of two per axis, so its size is exactly proportional to the patch's voxels."""
    import torch

    from .models import build_network

    smallest = [DOWNSAMPLING] * len(cfg.patch_size)
    try:
        net = build_network(cfg).train()
        total = 0

        def count(module: Any, _inputs: Any, output: Any) -> None:
            nonlocal total
            if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):
                total += output.numel() * 4  # fp32
        hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a few milliseconds of work: no thread pool to spin up on a busy machine
        try:
            with torch.no_grad():
                net(torch.zeros(2, 1, *smallest))  # 2: BatchNorm wants more than one value per channel
        finally:
            torch.set_num_threads(threads)
            for hook in hooks:
                hook.remove()
    except Exception:  # noqa: BLE001 - an estimate only: never stop a run because it could not be made
        return None
    per_image = total / 2 * math.prod(cfg.patch_size) / math.prod(smallest)
    return int(per_image / 2 if cfg.amp else per_image)  # autocast may keep activations in 16 bits


def images_per_step(cfg: Any) -> tuple[int, str]:
    """The most images the student forwards in one step, and the batch option that sets it."""
    if cfg.mode == "supervised":
        n = max(cfg.pretrain_labeled_batch, cfg.finetune_labeled_batch)
        return n, f"{n} labeled"
    pre = cfg.pretrain_labeled_batch + cfg.pretrain_unlabeled_batch
    fine = cfg.finetune_labeled_batch + cfg.finetune_unlabeled_batch
    if fine >= pre:
        return fine, f"{cfg.finetune_labeled_batch}+{cfg.finetune_unlabeled_batch} (fine-tuning)"
    return pre, f"{cfg.pretrain_labeled_batch}+{cfg.pretrain_unlabeled_batch} (pre-training)"


def device_memory(device: Any) -> tuple[int, str] | None:
    """(bytes, description) of the memory a run on ``device`` can use at most; None when unknown."""
    import torch

    device = torch.device(device)
    try:
        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            return int(props.total_memory), f"the GPU {props.name}"
        import psutil

        return int(psutil.virtual_memory().total), "this machine's memory"
    except Exception:  # noqa: BLE001 - no estimate of the device: no refusal
        return None


def training_memory_estimate(cfg: Any) -> int | None:
    per_image = activation_bytes_per_image(cfg)
    if per_image is None:
        return None
    return per_image * images_per_step(cfg)[0]


def _smaller_patch(cfg: Any, factor: float) -> str:
    """A patch about ``factor`` times the voxels, in multiples of 16."""
    scale = factor ** (1 / len(cfg.patch_size))
    return ",".join(str(max(16, int(p * scale) // 16 * 16)) for p in cfg.patch_size)


def check_training_memory(cfg: Any, device: Any) -> int | None:
    """Raise a DataError (exit 2) when the estimate exceeds the device's memory; returns the estimate."""
    estimate = training_memory_estimate(cfg)
    memory = device_memory(device)
    if estimate is None or memory is None:
        return estimate
    total, where = memory
    if estimate > total:
        images, batch = images_per_step(cfg)
        fit = _smaller_patch(cfg, 0.5 * total / estimate)
        patch = ",".join(str(p) for p in cfg.patch_size)
        raise DataError(
            f"patch_size {patch} with batches of {batch} images needs at least {estimate / GB:.1f} GB "
            f"(estimate of the network's activations alone) but {where} has {total / GB:.1f} GB: use a "
            f"smaller --patch-size (e.g. {fit}) or --batch-size (panel: patch and batch settings)")
    return estimate
