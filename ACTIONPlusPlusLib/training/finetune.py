"""Stage 2, fine-tuning (spec 6): supervised + pseudo-label loss + anatomical contrast (AnCo, Eq. 2)
+ SAACL (Eq. 3-5) on a d = 128 representation head of the student and its EMA copy on the teacher (D6).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..distributed import all_gather_cat
from ..losses.anco import anco_loss
from ..losses.saacl import SAACL
from ..losses.supervised import supervised_loss
from ..losses.unsupervised import pseudo_label_loss
from ..models.heads import RepresentationHead
from ..schedules import ema_update
from . import augment


class FinetuneHeads(nn.Module):
    def __init__(self, cfg, feature_channels: list[int]) -> None:
        super().__init__()
        self.q_rep = RepresentationHead(cfg.dim, feature_channels, cfg.representation_dim, cfg.representation_kernel)
        self.k_rep = copy.deepcopy(self.q_rep).requires_grad_(False)
        self.saacl = SAACL(cfg.num_classes, cfg.representation_dim, queue_size=cfg.saacl_queue_size,
                           anchors_per_class=cfg.saacl_anchors_per_class, lambda_a=cfg.lambda_a,
                           centroid_momentum=cfg.centroid_momentum, center_seed=cfg.seed)
        self.saacl.gather_fn = all_gather_cat

    @torch.no_grad()
    def ema(self, decay: float) -> None:
        ema_update(self.k_rep, self.q_rep, decay)


@dataclass
class FinetuneStep:
    cfg: object
    student: nn.Module
    teacher: nn.Module
    heads: FinetuneHeads

    def __call__(self, batches, host_gen, dev_gen, tau: float, autocast) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        x_l, y_l = batches.labeled(cfg.finetune_labeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)
        x_u = batches.unlabeled(cfg.finetune_unlabeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)

        with torch.no_grad(), autocast():  # teacher: pseudo-labels on the weak view, features on x_l
            prob_t = torch.softmax(self.teacher(x_u).logits.float(), dim=1)
            conf, pseudo = prob_t.max(dim=1)
            feat_t = self.teacher(x_l).features
            rep_t = self.heads.k_rep(feat_t).float()

        if cfg.mix == "cutmix":
            masks = augment.cutmix_masks(len(x_u), tuple(x_u.shape[2:]), dev_gen, x_u.device)
        elif cfg.mix == "classmix":
            masks = augment.classmix_masks(pseudo, cfg.num_classes, dev_gen)
        else:
            masks = None
        x_s = x_u
        if masks is not None:
            x_s, pseudo, conf = augment.mix(x_u, pseudo, conf, masks)
        if cfg.intensity_augmentation:
            x_s = augment.gaussian_blur(augment.jitter(x_s, cfg.strong_jitter_strength, dev_gen), dev_gen)

        with autocast():
            out_l = self.student(x_l)
            out_u = self.student(x_s)
            rep_l = self.heads.q_rep(out_l.features)
            rep_u = self.heads.q_rep(out_u.features)
        logits_l, logits_u = out_l.logits.float(), out_u.logits.float()
        rep_l, rep_u = rep_l.float(), rep_u.float()

        losses = {
            "sup": supervised_loss(logits_l, y_l),
            "unsup": pseudo_label_loss(logits_u, pseudo, conf, cfg.strong_threshold),
        }
        prob = torch.cat([torch.softmax(logits_l, 1), torch.softmax(logits_u, 1)]).detach()
        valid = torch.cat([torch.ones_like(y_l, dtype=torch.bool), conf >= cfg.weak_threshold])
        losses["anco"] = anco_loss(torch.cat([rep_l, rep_u]), torch.cat([y_l, pseudo]), valid, prob, tau,
                                   num_queries=cfg.anco_queries, num_negatives=cfg.anco_negatives,
                                   strong_threshold=cfg.strong_threshold, generator=dev_gen)
        losses["saacl"] = self.heads.saacl(rep_l, rep_t, y_l, tau, generator=dev_gen)
        total = (cfg.weight_sup * losses["sup"] + cfg.weight_unsup * losses["unsup"]
                 + cfg.weight_anco * losses["anco"] + cfg.weight_saacl * losses["saacl"])
        return total, losses


@dataclass
class SupervisedStep:
    """The supervised-only baseline: L_sup on the labeled batch (same network, optimiser and schedule)."""

    cfg: object
    student: nn.Module

    def __call__(self, batches, host_gen, dev_gen, autocast) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        x_l, y_l = batches.labeled(cfg.finetune_labeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)
        if cfg.intensity_augmentation:
            x_l = augment.jitter(x_l, cfg.jitter_strength, dev_gen)
        with autocast():
            logits = self.student(x_l).logits
        loss = supervised_loss(logits.float(), y_l)
        return loss, {"sup": loss}
