"""Stage 1, pre-training: global and local instance discrimination (Eq. 1) between the student and its
EMA teacher against memory queues, plus the supervised loss in the joint phase (spec 5, decision D1).

Deviation from the authors' code, kept deliberately: the teacher-side heads (k_lat, k_loc) are EMA
copies of the student projectors and the whole teacher branch runs without gradient (MoCo/ISD
convention), instead of the code's k-heads that learn only through the KL target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..distributed import all_gather_cat
from ..losses.instance import FeatureQueue, kl_distill, similarity_logits
from ..losses.supervised import supervised_loss
from ..models.heads import GlobalProjector, LocalHead, LocalWindows, Predictor
from ..schedules import ema_update
from . import augment


class ISDHeads(nn.Module):
    """Projectors/predictors of both branches and the two memory queues (the paper's mined views)."""

    def __init__(self, cfg, latent_channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        c = cfg.num_classes
        self.q_lat = GlobalProjector(latent_channels, cfg.latent_dim)
        self.pred_lat = Predictor(cfg.latent_dim)
        self.q_loc = LocalHead(cfg.dim, c, 2 * c)
        self.pred_loc = LocalHead(cfg.dim, c, c)
        self.k_lat = copy.deepcopy(self.q_lat).requires_grad_(False)
        self.k_loc = copy.deepcopy(self.q_loc).requires_grad_(False)
        self.windows = LocalWindows(cfg.dim, cfg.local_window, cfg.local_stride, cfg.local_pool,
                                    cfg.local_window_depth, cfg.local_stride_depth)
        probe = self.windows(torch.zeros(1, c, *cfg.patch_size))
        self.num_windows = probe.shape[1]
        self.local_features = int(probe[0, 0].numel())  # F = C * pool^d
        self.lat_queue = FeatureQueue(cfg.isd_queue_size, cfg.latent_dim, generator=generator)
        self.loc_queue = FeatureQueue(cfg.isd_queue_size, (self.num_windows, self.local_features), generator=generator)
        self.intended_reshape = cfg.local_intended_reshape

    def student_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.q_lat, self.pred_lat, self.q_loc, self.pred_loc) for p in m.parameters()]

    @torch.no_grad()
    def ema(self, decay: float) -> None:
        ema_update(self.k_lat, self.q_lat, decay)
        ema_update(self.k_loc, self.q_loc, decay)

    def _rows(self, z: torch.Tensor) -> torch.Tensor:
        """(N, P, F) -> rows of the local similarity matrix (D9: one row per (sample, feature))."""
        if self.intended_reshape:
            return z.transpose(1, 2).reshape(-1, z.shape[1])
        return z.transpose(0, 1).reshape(-1, z.shape[1])  # the code's (p, n, f) memory, viewed by P

    def losses(self, out_s, out_t, tau_s: float, tau_t: float, use_local: bool) -> dict[str, torch.Tensor]:
        """Global (and local) KL(teacher || student) over similarities to the queues; then enqueue."""
        w = self.pred_lat(self.q_lat(out_s.latent.float()))
        with torch.no_grad():
            v = self.k_lat(out_t.latent.float())
        queue = self.lat_queue.data
        result = {"global": kl_distill(similarity_logits(w, queue, tau_s), similarity_logits(v, queue, tau_t))}
        z_t = None
        if use_local:
            z_s = self.pred_loc(self.q_loc(self.windows(out_s.logits.float()))).flatten(2)  # (N, P, F)
            with torch.no_grad():
                z_t = self.k_loc(self.windows(out_t.logits.float())).flatten(2)
            q_rows = self._rows(self.loc_queue.data)
            result["local"] = kl_distill(similarity_logits(self._rows(z_s), q_rows, tau_s),
                                         similarity_logits(self._rows(z_t), q_rows, tau_t))
        with torch.no_grad():
            self.lat_queue.enqueue(all_gather_cat(v.detach()))
            if z_t is not None:
                self.loc_queue.enqueue(all_gather_cat(z_t.detach()))
        return result


@dataclass
class PretrainStep:
    """One pre-training iteration; ``joint`` adds the local and supervised terms (D1)."""

    cfg: object
    student: nn.Module
    teacher: nn.Module
    heads: ISDHeads

    def __call__(self, batches, host_gen, dev_gen, tau_s: float, tau_t: float, joint: bool, autocast) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        x_l, y_l = batches.labeled(cfg.pretrain_labeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)
        parts = [x_l]
        if cfg.pretrain_unlabeled_batch > 0 and batches.n_unl > 0:
            parts.append(batches.unlabeled(cfg.pretrain_unlabeled_batch, host_gen, dev_gen, cfg.geometric_augmentation))
        x = torch.cat(parts)
        if cfg.intensity_augmentation:
            x_s = augment.jitter(x, cfg.jitter_strength, dev_gen)
            x_t = augment.gaussian_blur(augment.jitter(x, cfg.jitter_strength, dev_gen), dev_gen)
        else:
            x_s = x_t = x
        with autocast():
            out_s = self.student(x_s)
            with torch.no_grad():
                out_t = self.teacher(x_t)
        losses = self.heads.losses(out_s, out_t, tau_s, tau_t, use_local=joint)
        total = cfg.weight_global * losses["global"]
        if joint:
            losses["sup"] = supervised_loss(out_s.logits[: len(x_l)], y_l)
            total = total + cfg.weight_local * losses["local"] + losses["sup"]
        return total, losses
