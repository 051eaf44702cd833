"""Stage 1, pre-training: global and local instance discrimination (Eq. 1) between the student and its
EMA teacher against memory queues, plus the supervised loss in the joint phase (spec 5, decision D1).
With ``weight_dense`` > 0 a dense term (losses/dense.py, not in the paper) joins both phases.

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
from ..losses.dense import region_infonce, region_rows
from ..losses.instance import FeatureQueue, kl_distill, similarity_logits
from ..losses.supervised import supervised_loss
from ..models.heads import GlobalProjector, LocalHead, LocalWindows, Predictor
from ..schedules import ema_update
from . import augment


class RegionProjector(nn.Module):
    """Linear -> ReLU -> Linear over region rows (M, C); the dense term's projector and predictor."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(cin, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ISDHeads(nn.Module):
    """Projectors/predictors of both branches and the two memory queues (the paper's mined views), and
    with ``weight_dense`` > 0 the dense term's heads over the network's last decoder features."""

    def __init__(self, cfg, latent_channels: int, generator: torch.Generator | None = None,
                 feature_channels: int = 0) -> None:
        super().__init__()
        c = cfg.num_classes
        self.dense = float(cfg.weight_dense) > 0
        if self.dense:  # only then: the default's state dict (and every checkpoint) stays as it was
            if feature_channels <= 0:
                raise ValueError("weight_dense > 0 needs the network's last feature channels")
            self.q_dense = RegionProjector(feature_channels, cfg.representation_dim)
            self.pred_dense = RegionProjector(cfg.representation_dim, cfg.representation_dim)
            self.k_dense = copy.deepcopy(self.q_dense).requires_grad_(False)
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
        if self.dense:  # regions of the local windows' stride (its depth fallback included), within the patch
            self.cells = tuple(max(1, min(s, p)) for s, p in zip(self.windows.strides, cfg.patch_size))

    def student_parameters(self) -> list[nn.Parameter]:
        heads = [self.q_lat, self.pred_lat, self.q_loc, self.pred_loc]
        if self.dense:
            heads += [self.q_dense, self.pred_dense]
        return [p for m in heads for p in m.parameters()]

    @torch.no_grad()
    def ema(self, decay: float) -> None:
        ema_update(self.k_lat, self.q_lat, decay)
        ema_update(self.k_loc, self.q_loc, decay)
        if self.dense:
            ema_update(self.k_dense, self.q_dense, decay)

    def dense_loss(self, student_features: torch.Tensor, teacher_features: torch.Tensor, tau: float) -> torch.Tensor:
        """Region InfoNCE (losses/dense.py) between aligned student and teacher feature maps."""
        q = self.pred_dense(self.q_dense(region_rows(student_features.float(), self.cells)))
        with torch.no_grad():
            k = self.k_dense(region_rows(teacher_features.float(), self.cells))
        return region_infonce(q, k, tau)

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
        dense = self.heads.dense
        if dense:  # the teacher sees a rot90/flip of its view; its maps are turned back to the student's grid
            turns = augment.random_dihedral(len(x), tuple(x.shape[2:]), host_gen)
            x_t = augment.apply_dihedral(x_t, turns)
        with autocast():
            out_s = self.student(x_s)
            with torch.no_grad():
                out_t = self.teacher(x_t)
        if dense:
            back = augment.apply_dihedral(out_t.features[-1], turns, inverse=True)
            out_t = out_t._replace(logits=augment.apply_dihedral(out_t.logits, turns, inverse=True))
        losses = self.heads.losses(out_s, out_t, tau_s, tau_t, use_local=joint)
        total = cfg.weight_global * losses["global"]
        if dense:
            losses["dense"] = self.heads.dense_loss(out_s.features[-1], back, cfg.dense_temperature)
            total = total + cfg.weight_dense * losses["dense"]
        if joint:
            losses["sup"] = supervised_loss(out_s.logits[: len(x_l)], y_l)
            total = total + cfg.weight_local * losses["local"] + losses["sup"]
        return total, losses
