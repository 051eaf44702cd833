"""Inference benchmark: seconds per volume for the two presets' real networks (random weights).

    .venv/bin/python bench/infer.py                      # CPU, and CUDA too when present
    .venv/bin/python bench/infer.py --reduced            # quick: smaller volumes and patches
    .venv/bin/python bench/infer.py --device cuda --repeats 5

Shapes (full mode):
- LA: a 144x144x88 volume in (x, y, z) (the UA-MT crop size), V-Net at patch 112x112x80 with stride
  18x18x4 -> 3x3x3 = 27 windows (spec 12.14).
- ACDC: 10 slices of 256x232 (z, y, x = 10, 256, 232), each resized to 256x256 for the 2D U-Net.
The figures include host->device copies, sliding-window accumulation and the transfer of the labels
back to the host (what ``predict_case`` costs end to end).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ACTIONPlusPlusLib.config import preset  # noqa: E402
from ACTIONPlusPlusLib.data.types import Case  # noqa: E402
from ACTIONPlusPlusLib.device import describe_devices, resolve_device  # noqa: E402
from ACTIONPlusPlusLib import inference  # noqa: E402
from ACTIONPlusPlusLib.inference import DEFAULT_STRIDE_3D, predict_case, window_starts  # noqa: E402
from ACTIONPlusPlusLib.models import build_network  # noqa: E402

FULL = {
    # volume shape in (x, y, z) for LA, (slices, H, W) for ACDC
    "la": dict(volume=(144, 144, 88), overrides={}, stride=DEFAULT_STRIDE_3D),
    "acdc": dict(volume=(10, 256, 232), overrides={}, stride=None),
}
REDUCED = {
    "la": dict(volume=(60, 60, 36), overrides={"patch_size": [48, 48, 32]}, stride=(12, 12, 4)),
    "acdc": dict(volume=(4, 128, 116), overrides={"patch_size": [128, 128]}, stride=None),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run, device: torch.device):
    """(run(), seconds), synchronised on CUDA."""
    _sync(device)
    start = time.perf_counter()
    out = run()
    _sync(device)
    return out, time.perf_counter() - start


def bench_one(name: str, spec: dict, device: torch.device, repeats: int, warm: int, batch: int | None,
              compare: bool = False) -> str:
    cfg = preset(name, **spec["overrides"])
    torch.manual_seed(0)
    model = build_network(cfg).to(device).eval()
    rng = np.random.default_rng(0)
    if cfg.dim == 3:
        x, y, z = spec["volume"]
        image = rng.standard_normal((z, y, x)).astype(np.float32)  # Case order (z, y, x)
        starts = [window_starts(max(d, p), p, s) for d, p, s in zip(spec["volume"], cfg.patch_size, spec["stride"])]
        detail = (
            f"volume {x}x{y}x{z} (x,y,z), patch {'x'.join(map(str, cfg.patch_size))}, stride "
            f"{'x'.join(map(str, spec['stride']))}, {math.prod(len(s) for s in starts)} windows"
        )
    else:
        s, h, w = spec["volume"]
        image = rng.uniform(size=(s, h, w)).astype(np.float32)
        detail = f"{s} slices {h}x{w} -> {'x'.join(map(str, cfg.patch_size))}"
    case = Case(name, image)
    kwargs = dict(batch_size=batch)
    if cfg.dim == 3:
        kwargs["stride"] = spec["stride"]
    for _ in range(warm):
        predict_case(model, case, cfg, device=device, **kwargs)
    def predict():
        return predict_case(model, case, cfg, device=device, **kwargs)

    def plain_predict():  # the training network as it is (inference.OPTIMIZE_FOR_INFERENCE off)
        inference.OPTIMIZE_FOR_INFERENCE = False
        try:
            return predict()
        finally:
            inference.OPTIMIZE_FOR_INFERENCE = True

    if compare and device.type != "cpu":
        compare = False  # inference_network runs the network itself there: nothing to compare
        detail += "; the same network with or without --compare (the inference copy is for the CPU)"
    times, plain_times = [], []
    for _ in range(repeats):  # with --compare, the two alternate, so a busy machine slows both alike
        result, seconds = _timed(predict, device)
        times.append(seconds)
        if compare:
            plain, seconds = _timed(plain_predict, device)
            plain_times.append(seconds)
    assert result.labels.shape == image.shape
    best, mean = min(times), sum(times) / len(times)
    if compare:
        detail += (f"; plain network {min(plain_times):.3f} s (best): {min(plain_times) / best:.2f}x faster, labels "
                   f"equal at {100 * float((plain.labels == result.labels).mean()):.4f}% of voxels")
    peak = ""
    if device.type == "cuda":
        peak = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
        if cfg.amp:  # the mixed-precision labels against fp32 ones, same weights and windows
            fp32 = predict_case(model, case, preset(name, **spec["overrides"], amp=False), device=device, **kwargs)
            peak += f", labels equal to fp32 at {100 * float((fp32.labels == result.labels).mean()):.3f}% of voxels"
    return (
        f"{name.upper():5s} {device.type:4s} {mean:8.3f} s/volume (best {best:.3f}, n={repeats}, "
        f"amp={'bf16' if cfg.amp and device.type == 'cuda' else 'off'}){peak}  [{detail}, base {cfg.base_channels}]"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="all", help="all (CPU, and CUDA when present) | cpu | cuda | cuda:N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--warm", type=int, default=None, help="untimed runs first (cuDNN autotune, allocator); default 1 on CUDA, 0 on CPU"
    )
    parser.add_argument("--reduced", action="store_true", help="quick mode: smaller volumes and patches")
    parser.add_argument("--preset", choices=["la", "acdc", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None, help="windows/slices per forward")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--compare", action="store_true",
                        help="also time the training network as it is (no BatchNorm folding, no channels-last)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [resolve_device(args.device)]
    info = describe_devices()
    gpus = ", ".join(d["name"] for d in info["cuda_devices"]) or "none"
    print(f"torch {info['torch']}, CPU threads {torch.get_num_threads()}, CUDA GPUs: {gpus}")
    print(f"mode: {'reduced' if args.reduced else 'full'} shapes, random weights")
    table = REDUCED if args.reduced else FULL
    names = ["la", "acdc"] if args.preset == "both" else [args.preset]
    for device in devices:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        for name in names:
            warm = args.warm if args.warm is not None else (1 if device.type == "cuda" else 0)
            print(bench_one(name, table[name], device, args.repeats, warm, args.batch_size, args.compare), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
