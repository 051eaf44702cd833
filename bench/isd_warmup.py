"""How much the pre-training warm-up (global instance discrimination, spec 5.3) learns on real ACDC.

    .venv/bin/python bench/isd_warmup.py                       # 64x64, 1,000 warm-up iterations, seed 1337
    .venv/bin/python bench/isd_warmup.py --size 128 --iterations 2000

The warm-up distils the EMA teacher's similarities to a queue of its own past embeddings into the
student (KL, teacher temperature 0.01, student 0.1).  Its loss alone says little: the target sharpens
as the teacher learns, so the loss can stay flat while the student learns.  Every ``--every``
iterations this prints, averaged over those iterations: the loss; how often
the student's most similar queue entry is the teacher's (``top-1``; chance is 1 / queue size); the
teacher's and the student's entropies over the queue in nats (uniform = ln(queue size)); and the cosine
between the student's prediction and the teacher's embedding of the same image.  A warm-up that
learns raises ``top-1`` well above chance and brings the student's entropy down towards the teacher's.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ACTIONPlusPlusLib.data import load_dataset  # noqa: E402
from ACTIONPlusPlusLib.training.loop import Trainer  # noqa: E402
from ACTIONPlusPlusLib.training.pretrain import ISDHeads  # noqa: E402
from small_acdc import acdc_config  # noqa: E402

STATS = ("loss", "top-1", "H teacher", "H student", "cos(student, teacher)")


class ProbedISDHeads(ISDHeads):
    """The trainer's ISD heads, recording what the global term sees at every call (no change to it)."""

    records: list[dict[str, float]]

    @torch.no_grad()
    def _probe(self, out_s, out_t, tau_s: float, tau_t: float) -> dict[str, float]:
        w = F.normalize(self.pred_lat(self.q_lat(out_s.latent.float())), dim=1)
        v = F.normalize(self.k_lat(out_t.latent.float()), dim=1)
        queue = F.normalize(self.lat_queue.data, dim=1)
        p_t, p_s = (v @ queue.t() / tau_t).softmax(dim=1), (w @ queue.t() / tau_s).softmax(dim=1)

        def entropy(p: torch.Tensor) -> float:
            return float(-(p * p.clamp_min(1e-12).log()).sum(dim=1).mean())

        return {"top-1": float((p_t.argmax(dim=1) == p_s.argmax(dim=1)).float().mean()), "H teacher": entropy(p_t),
                "H student": entropy(p_s), "cos(student, teacher)": float((w * v).sum(dim=1).mean())}

    def losses(self, out_s, out_t, tau_s: float, tau_t: float, use_local: bool) -> dict[str, torch.Tensor]:
        probe = self._probe(out_s, out_t, tau_s, tau_t)  # before the enqueue, against the queue the loss uses
        result = super().losses(out_s, out_t, tau_s, tau_t, use_local)
        self.records.append({"loss": float(result["global"].detach()), **probe})
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000, help="warm-up iterations")
    parser.add_argument("--every", type=int, default=100, help="print every this many iterations")
    parser.add_argument("--size", type=int, default=64, help="network input size")
    parser.add_argument("--labeled", type=int, default=3, help="labeled patients (the rest of train is unlabeled)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ACDC")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"ACDC data not found at {args.data}", file=sys.stderr)
        return 2
    cfg = acdc_config(args.size, budget_iterations=0, log_every=args.every, checkpoint_every=10 ** 9,
                      mode="actionpp", seed=args.seed, pretrain_warmup_iterations=args.iterations,
                      pretrain_joint_iterations=0, finetune_iterations=0)
    data = load_dataset(args.data, cfg, labeled=args.labeled, splits=("train",))
    print(f"ACDC: {len(data.labeled)} labeled and {len(data.unlabeled)} unlabeled slices, {args.size}x{args.size}, "
          f"{args.iterations} warm-up iterations, seed {args.seed}, queue {cfg.isd_queue_size} (chance top-1 "
          f"{1 / cfg.isd_queue_size:.3f}, uniform entropy {math.log(cfg.isd_queue_size):.2f}), "
          f"temperatures student {cfg.warmup_tau_student} / teacher {cfg.warmup_tau_teacher}", flush=True)
    print("iterations  " + "  ".join(STATS), flush=True)
    printed = 0

    def report(event: dict) -> None:  # at each progress event (every --every iterations)
        nonlocal printed
        records = trainer.isd.records
        if event.get("event") != "progress" or len(records) == printed:
            return
        window = records[printed:]
        means = [sum(r[k] for r in window) / len(window) for k in STATS]
        print(f"{printed + 1:>5}-{len(records):<5} " + "  ".join(f"{m:.3f}" for m in means), flush=True)
        printed = len(records)

    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, data.labeled, data.unlabeled, Path(out), callback=report)
        trainer.isd.__class__ = ProbedISDHeads  # the same module and state, probed
        trainer.isd.records = []
        trainer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
