"""AnCo (anatomical contrast) forward + backward: time and peak memory, index-based vs gathered negatives.

    .venv/bin/python bench/anco.py                                  # 8 x 496 x 256 x 256 map, 256 queries x 512 negatives
    .venv/bin/python bench/anco.py --channels 128 --size 64         # the fine-tuning step's map at 64x64

Each implementation runs in its own subprocess, so that the peak RSS (CPU) or peak allocated memory
(CUDA) is its own.  ``indexed`` is ``losses.anco.anco_loss`` as the trainer runs it (negatives read by
index, gradient formed in the same pass); ``gathered`` materialises every query's (M, D) negative rows
per class and differentiates through ``contrast_ce``, as the loss did before (and as the authors'
code does).  Both use the same draws (``anco_sample``) and the script checks that the losses and the
gradients agree.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ACTIONPlusPlusLib.losses.anco import anco_loss, anco_sample, contrast_ce, gather_pixels  # noqa: E402


def gathered_anco(rep, labels, valid, prob, tau, q, m, generator):
    """The pre-issue-10 formulation: per class, gather (Q, M, D) negatives and differentiate through them."""
    smp = anco_sample(rep, labels, valid, prob, tau, q, m, 0.97, generator)
    total = torch.zeros((), device=rep.device)
    for i in range(prob.shape[1]):
        query = gather_pixels(rep, smp.query_idx[i])
        with torch.no_grad():
            negatives = gather_pixels(rep.detach(), smp.negative_idx[i])
        term = contrast_ce(query, smp.prototypes[i], negatives, tau)
        total = total + torch.where(smp.use[i], term, torch.zeros_like(term))
    v = smp.num_valid
    return torch.where(v > 1, total / v.clamp_min(1).float(), torch.zeros_like(total))


def run_one(impl: str, args) -> dict:
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.channels, args.size, args.size)
    if args.layout == "channels-last":  # as RepresentationHead.dense_no_grad gives it to the trainer's AnCo
        n, c, h, w = shape  # drawn in that layout: a converted copy would double the peak memory measured
        rep = torch.randn((n, h, w, c), generator=g, device=device).permute(0, 3, 1, 2)
    else:
        rep = torch.randn(shape, generator=g, device=device)
    rep.requires_grad_(True)
    labels = torch.randint(0, 4, (args.batch, args.size, args.size), generator=g, device=device)
    prob = torch.softmax(torch.randn(args.batch, 4, args.size, args.size, generator=g, device=device), 1)
    valid = torch.ones_like(labels, dtype=torch.bool)
    fn = anco_loss if impl == "indexed" else gathered_anco
    times = []
    result = None  # (loss, |grad|) of the last repeat; its tensors are freed before the next one starts
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        loss = fn(rep, labels, valid, prob, 0.5, args.queries, args.negatives, generator=torch.Generator(device=device).manual_seed(1))
        (grad,) = torch.autograd.grad(loss, rep)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        result = (loss.item(), grad.norm().item())
        del loss, grad
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"impl": impl, "seconds": min(times), "peak_gib": peak / 2**30, "loss": result[0], "grad_norm": result[1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=496)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--negatives", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layout", choices=["channels-first", "channels-last"], default="channels-first",
                        help="memory layout of the map (the trainer's representation head gives channels-last)")
    parser.add_argument("--impl", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(run_one(args.impl, args)))
        return 0
    print(f"AnCo forward + backward, map {args.batch}x{args.channels}x{args.size}x{args.size}, {args.queries} queries x "
          f"{args.negatives} negatives per class, 4 classes, {args.layout} map, {args.device}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    results = {}
    for impl in ("gathered", "indexed"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--impl", impl], capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        results[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[impl]
        print(f"{impl:9s} {r['seconds']:8.3f} s   peak {'GPU memory' if args.device != 'cpu' else 'RSS'} {r['peak_gib']:6.2f} GiB"
              f"   loss {r['loss']:.6f}   |grad| {r['grad_norm']:.6e}")
    a, b = results["gathered"], results["indexed"]
    same = abs(a["loss"] - b["loss"]) <= 1e-4 * max(1.0, abs(a["loss"])) and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-3 * a["grad_norm"]
    print(f"indexed vs gathered: {a['seconds'] / b['seconds']:.1f}x faster, {b['peak_gib'] / a['peak_gib']:.2f}x the peak memory; "
          f"same loss and gradient norm: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
