"""Stage 2, fine-tuning (spec 6): supervised + pseudo-label loss + anatomical contrast (AnCo, Eq. 2)
+ SAACL (Eq. 3-5) on a d = 128 representation head of the student and its EMA copy on the teacher (D6).

Beyond the spec (issue 9, README "Design decisions"): pseudo-labels are made class-aware
(distribution alignment of the teacher's probabilities towards the labeled class prior, as a guard
against a class vanishing rather than a target, per-class confidence thresholds) and masked per
pixel, and the unsupervised and contrastive weights ramp up.
The strong view pastes a labeled image (with its ground truth) into each unlabeled one; its pasted
pixels are taught with CE and soft Dice like the labeled batch (``pasted_dice``).

Cost (issue 10): one student forward over labeled + strong unlabeled images and one teacher forward
over labeled + weak unlabeled images (``fused_forward``); the representation head is evaluated densely
only without gradient (prototypes, negatives) and, with gradient, only at the sampled query and anchor
pixels (``RepresentationHead.at_pixels``, exact because the kernel-1 head is linear); AnCo reads its
negatives by index without materialising them (``losses.anco.indexed_contrast``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..distributed import all_gather_cat
from ..losses.anco import anco_loss, gather_pixels
from ..losses.saacl import SAACL
from ..losses.supervised import dice_loss, fp32_loss, one_hot, supervised_loss
from ..losses.unsupervised import balanced_mask, masked_pseudo_label_loss, pseudo_label_loss
from ..models.heads import RepresentationHead, pixel_taps
from ..schedules import ema_update
from . import augment
from .components import keep_largest_components


class FinetuneHeads(nn.Module):
    """Representation heads, SAACL state and the running class statistics of the pseudo-labels.

    Buffers (in the checkpoint): ``labeled_prior`` (C,) EMA of the labeled batches' class fractions,
    ``teacher_prior`` (C,) EMA of the class shares among the teacher's (aligned) pseudo-labels,
    ``class_confidence`` (C,) EMA of the mean (aligned) teacher confidence of the pixels given to each
    class, ``logit_offset`` (C,) the alignment offsets, ``teacher_reliability`` () EMA of the teacher's
    foreground Dice on labeled batches, ``stats_ready`` whether the EMAs have been initialised.
    """

    def __init__(self, cfg, feature_channels: list[int]) -> None:
        super().__init__()
        self.q_rep = RepresentationHead(cfg.dim, feature_channels, cfg.representation_dim, cfg.representation_kernel)
        self.k_rep = copy.deepcopy(self.q_rep).requires_grad_(False)
        self.saacl = SAACL(cfg.num_classes, cfg.representation_dim, queue_size=cfg.saacl_queue_size,
                           anchors_per_class=cfg.saacl_anchors_per_class, lambda_a=cfg.lambda_a,
                           centroid_momentum=cfg.centroid_momentum, center_seed=cfg.seed)
        self.saacl.gather_fn = all_gather_cat
        c = cfg.num_classes
        self.register_buffer("labeled_prior", torch.full((c,), 1.0 / c))
        self.register_buffer("teacher_prior", torch.full((c,), 1.0 / c))
        self.register_buffer("pseudo_share", torch.full((c,), 1.0 / c))
        self.register_buffer("class_confidence", torch.ones(c))
        self.register_buffer("logit_offset", torch.zeros(c))
        self.register_buffer("teacher_reliability", torch.zeros(()))
        self.register_buffer("stats_ready", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # checkpoints written before ``pseudo_share`` existed resume with the teacher's running shares
        if prefix + "pseudo_share" not in state_dict and prefix + "teacher_prior" in state_dict:
            state_dict[prefix + "pseudo_share"] = state_dict[prefix + "teacher_prior"].clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def ema(self, decay: float) -> None:
        ema_update(self.k_rep, self.q_rep, decay)

    def _ema_(self, buffer: Tensor, value: Tensor, momentum: float) -> None:
        buffer.copy_(torch.where(self.stats_ready, momentum * buffer + (1.0 - momentum) * value, value))

    @torch.no_grad()
    @fp32_loss
    def pseudo_labels(self, cfg, prob_t: Tensor, y_l: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Class-aware pseudo-labels from the teacher's probabilities ``prob_t`` (B, C, *S).

        Distribution alignment (``pseudo_distribution_alignment``): the teacher's log-probabilities get
        per-class offsets, adapted every step so that the share of each class among the pseudo-labels
        stays within ``alignment_tolerance`` (a factor) of its share among the labeled pixels (a class
        the teacher under-predicts gets its most likely pixels back instead of vanishing into the
        background); inside that band the offsets leak towards 0 and the teacher's own shares rule
        (tolerance 1: follow the labeled shares exactly).  Returns ``(pseudo, conf,
        thresholds)``: argmax and max of the aligned probabilities and the per-class confidence
        thresholds (C,).  Updates the running statistics (no host sync).
        """
        c = prob_t.shape[1]
        m = float(cfg.class_stats_momentum)
        dims = [0] + list(range(2, prob_t.dim()))
        labeled_frac = all_gather_cat(one_hot(y_l, c).mean(dim=dims).unsqueeze(0)).mean(dim=0)
        self._ema_(self.labeled_prior, labeled_frac, m)
        prob = prob_t.float()
        if cfg.pseudo_distribution_alignment:
            shape = (1, c, *([1] * (prob.dim() - 2)))
            prob = torch.softmax(torch.log(prob.clamp_min(1e-12)) + self.logit_offset.view(shape), dim=1)
        conf, pseudo = prob.max(dim=1)
        member = one_hot(pseudo, c)
        sums = torch.stack([(member * conf.unsqueeze(1)).sum(dim=dims), member.sum(dim=dims)])  # (2, C)
        sums = all_gather_cat(sums.unsqueeze(0)).sum(dim=0)
        pseudo_frac = sums[1] / sums[1].sum().clamp_min(1.0)
        self._ema_(self.teacher_prior, pseudo_frac, m)
        # the shares the alignment compares: a short running mean (alignment_momentum), so that a batch
        # without a class (four apical slices hold no RV) moves its offset by a tenth of a share, not
        # by log(share floor); 0 compares each batch's own shares
        self._ema_(self.pseudo_share, pseudo_frac, float(cfg.alignment_momentum))
        if cfg.pseudo_distribution_alignment:  # move the offsets towards matching shares (next step)
            rate = float(cfg.alignment_rate)
            gap = torch.log(self.labeled_prior.clamp_min(1e-4)) - torch.log(self.pseudo_share.clamp_min(1e-4))
            band = math.log(max(float(cfg.alignment_tolerance), 1.0))
            # towards the band's edge while outside it, and a leak towards 0 ten times slower (a small L2
            # penalty on the offsets): an offset lasts only as long as it is needed.  No band: the match
            if band > 0:
                step = rate * (torch.sign(gap) * (gap.abs() - band).clamp_min(0.0) - 0.1 * self.logit_offset)
            else:
                step = rate * gap
            self.logit_offset.add_(step).clamp_(-float(cfg.alignment_max_offset), float(cfg.alignment_max_offset))
            self.logit_offset.sub_(self.logit_offset.mean())
        mean_conf = torch.where(sums[1] > 0, sums[0] / sums[1].clamp_min(1.0), self.class_confidence)
        self._ema_(self.class_confidence, mean_conf, m)
        self.stats_ready.fill_(True)
        base = float(cfg.pseudo_threshold)
        if cfg.pseudo_threshold_mode == "classwise":
            relative = self.class_confidence / self.class_confidence.max().clamp_min(1e-6)
            thresholds = (base * relative).clamp(min=min(float(cfg.pseudo_threshold_floor), base), max=base)
        else:
            thresholds = torch.full((c,), base, device=prob.device)
        return pseudo, conf, thresholds

    @torch.no_grad()
    def update_reliability(self, cfg, value: Tensor) -> Tensor:
        """EMA (``reliability_momentum``) of the teacher's reliability ``value``; returns the current EMA.

        The unsupervised terms are scaled by it: a teacher that cannot yet segment does not get to teach.
        ``value`` comes from :func:`view_agreement` on the unlabeled images (``reliability_source``
        "agreement") or :func:`labeled_dice` on the labeled batch ("labeled", which the teacher has fitted).
        """
        self._ema_(self.teacher_reliability, value.float(), float(cfg.reliability_momentum))
        return self.teacher_reliability.clone()


def _foreground_dice(pred: Tensor, reference: Tensor, num_classes: int, either: bool) -> Tensor:
    """Mean foreground Dice between two label maps over the whole batch (all ranks).  Classes count when
    present in ``reference`` (``either``: in either map); none present gives 0."""
    dims = [0] + list(range(2, pred.dim() + 1))
    a, b = one_hot(pred, num_classes), one_hot(reference, num_classes)
    stats = torch.stack([(a * b).sum(dim=dims), a.sum(dim=dims) + b.sum(dim=dims), b.sum(dim=dims)])
    stats = all_gather_cat(stats.unsqueeze(0)).sum(dim=0)
    dice = 2.0 * stats[0] / stats[1].clamp_min(1.0)
    present = (stats[1, 1:] if either else stats[2, 1:]) > 0
    return torch.where(present, dice[1:], torch.zeros_like(dice[1:])).sum() / present.sum().clamp_min(1)


@torch.no_grad()
def labeled_dice(logits_tl: Tensor, y_l: Tensor) -> Tensor:
    """The teacher's mean foreground Dice on the labeled batch (images it is trained on: optimistic)."""
    return _foreground_dice(logits_tl.argmax(dim=1), y_l, logits_tl.shape[1], either=False)


@torch.no_grad()
def view_agreement(prob_a: Tensor, prob_b: Tensor) -> Tensor:
    """Mean foreground Dice between the teacher's labels of the unlabeled images and of their mirror
    images (mapped back): how stable its segmentation of images it has never fitted is.  A teacher that
    labels no foreground, or labels it where the mirror view does not, scores near 0."""
    return _foreground_dice(prob_a.argmax(dim=1), prob_b.argmax(dim=1), prob_a.shape[1], either=True)


def _split(x: Tensor, n: int) -> tuple[Tensor, Tensor]:
    return x[:n], x[n:]


def _class_fractions(labels: Tensor, weights: Tensor, num_classes: int) -> Tensor:
    """Share of each class among the weighted pixels (C,)."""
    member = one_hot(labels, num_classes) * weights.unsqueeze(1).float()
    dims = [0] + list(range(2, member.dim()))
    sums = member.sum(dim=dims)
    return sums / sums.sum().clamp_min(1.0)


@dataclass
class FinetuneStep:
    cfg: object
    student: nn.Module
    teacher: nn.Module
    heads: FinetuneHeads

    def __call__(self, batches, host_gen, dev_gen, tau: float, autocast, ramp: float = 1.0
                 ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """One fine-tuning iteration: ``(total loss, its parts, diagnostics)``.

        ``ramp`` in [0, 1] scales the unsupervised and contrastive weights (the ramp-up).  Diagnostics:
        class shares (C,) among the labeled pixels (``labeled_fraction``), among the teacher's (aligned)
        pseudo-labels of the unlabeled images (``pseudo_fraction``) and among the pseudo-labelled pixels
        that pass the mask, i.e. what is taught (``taught_fraction``); ``mask_fraction``, the share of
        teacher-labelled pixels that pass it; ``teacher_dice`` with the reliability gate.
        """
        cfg = self.cfg
        heads = self.heads
        x_l, y_l = batches.labeled(cfg.finetune_labeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)
        x_u = batches.unlabeled(cfg.finetune_unlabeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)
        n_l = len(x_l)
        sparse = cfg.representation_kernel == 1

        mirror = cfg.teacher_mirror_view or (cfg.reliability_gate and cfg.reliability_source == "agreement")
        with torch.no_grad(), autocast():  # teacher: pseudo-labels on the weak view, features on x_l
            x_t = torch.cat([x_u, torch.flip(x_u, dims=[2])]) if mirror else x_u
            if cfg.fused_forward:
                out_t = self.teacher(torch.cat([x_l, x_t]))
                logits_tl, logits_tu = _split(out_t.logits, n_l)
                feat_tl = [f[:n_l] for f in out_t.features]
            else:
                logits_tu = self.teacher(x_t).logits
                out_tl = self.teacher(x_l)
                logits_tl, feat_tl = out_tl.logits, out_tl.features
            prob_t = torch.softmax(logits_tu.float(), dim=1)
            if mirror:  # the mirror view's probabilities, mapped back onto the image
                prob_t, prob_m = _split(prob_t, len(x_u))
                prob_m = torch.flip(prob_m, dims=[2])
            rep_t = None if sparse else heads.k_rep(feat_tl).float()
        gate = None
        if cfg.reliability_gate:
            value = view_agreement(prob_t, prob_m) if cfg.reliability_source == "agreement" \
                else labeled_dice(logits_tl.float(), y_l)
        if mirror and cfg.teacher_mirror_view:  # pseudo-labels from both views (test-time augmentation)
            prob_t = 0.5 * (prob_t + prob_m)
        pseudo, conf, thresholds = heads.pseudo_labels(cfg, prob_t, y_l)
        if cfg.pseudo_largest_component:  # before mixing: the regions are the unlabeled image's own
            pseudo = keep_largest_components(pseudo, cfg.num_classes)
        teacher_labels = pseudo
        if cfg.reliability_gate:  # after pseudo_labels: its first call marks the running statistics ready
            gate = heads.update_reliability(cfg, value)

        if cfg.mix == "cutmix":
            masks = augment.cutmix_masks(len(x_u), tuple(x_u.shape[2:]), dev_gen, x_u.device,
                                         cfg.cutmix_depth_fraction)
        elif cfg.mix == "classmix":
            masks = augment.classmix_masks(pseudo, cfg.num_classes, dev_gen)
        else:
            masks = None
        x_s = x_u
        from_labeled = torch.zeros_like(pseudo, dtype=torch.bool)
        if masks is not None:
            if cfg.mix_partner == "labeled" and cfg.mix_bidirectional:
                masks = augment.alternate_masks(masks)
            masks = augment.unmixed_tail(masks, cfg.mix_share)
            if cfg.mix_partner == "labeled":
                x_s, pseudo, conf, from_labeled = augment.mix_pair(x_u, pseudo, conf, x_l, y_l, masks)
            else:
                x_s, pseudo, conf = augment.mix(x_u, pseudo, conf, masks)
        if cfg.intensity_augmentation:
            x_s = augment.gaussian_blur(augment.jitter(x_s, cfg.strong_jitter_strength, dev_gen), dev_gen)
        if cfg.pseudo_threshold_mode == "balanced":
            teacher_mask = balanced_mask(conf, pseudo, ~from_labeled, cfg.pseudo_threshold, cfg.num_classes)
        else:
            teacher_mask = (conf >= thresholds[pseudo]) & ~from_labeled  # pixels labeled by the teacher

        with autocast():
            if cfg.fused_forward:
                out = self.student(torch.cat([x_l, x_s]))
                logits = out.logits.float()
                features = out.features
            else:
                out_l, out_u = self.student(x_l), self.student(x_s)
                logits = torch.cat([out_l.logits, out_u.logits]).float()
                features = [torch.cat([a, b]) for a, b in zip(out_l.features, out_u.features)]
            if not sparse:
                rep = heads.q_rep(features).float()
        logits_l, logits_u = _split(logits, n_l)
        if sparse:
            features = [f.float() for f in features]
            rep = heads.q_rep.dense_no_grad([f.detach() for f in features])

        losses = {"sup": supervised_loss(logits_l, y_l)}
        if cfg.pseudo_loss == "pixel":
            losses["unsup"] = masked_pseudo_label_loss(logits_u, pseudo, teacher_mask)
            # the pasted labeled pixels: ground truth in an unlabeled context, never gated; with
            # pasted_dice also their soft Dice, as for the labeled batch (CE alone is dominated by background)
            losses["pasted"] = masked_pseudo_label_loss(logits_u, pseudo, from_labeled)
            if cfg.pasted_dice:  # weighted by the pasted share as the CE term is ("half": 0.5)
                weight = from_labeled.float().mean() if cfg.pasted_dice_weight == "share" else 0.5
                losses["pasted"] = losses["pasted"] + weight * dice_loss(logits_u, pseudo, from_labeled)
        else:
            losses["unsup"] = pseudo_label_loss(logits_u, pseudo, conf, cfg.strong_threshold)
            losses["pasted"] = torch.zeros_like(losses["sup"])
        prob = torch.softmax(logits, 1).detach()
        valid = torch.cat([torch.ones_like(y_l, dtype=torch.bool), conf >= cfg.weak_threshold])
        losses["anco"] = anco_loss(rep, torch.cat([y_l, pseudo]), valid, prob, tau,
                                   num_queries=cfg.anco_queries, num_negatives=cfg.anco_negatives,
                                   strong_threshold=cfg.strong_threshold, generator=dev_gen,
                                   query_rows=(lambda idx: heads.q_rep.at_pixels(features, idx)) if sparse else None)
        idx, y_a, w_a = heads.saacl.sample(y_l, dev_gen)  # anchors: labeled pixels (the first n_l images)
        if sparse:  # student and teacher read the same anchor pixels: where to read is computed once
            taps = pixel_taps([tuple(f.shape[2:]) for f in features], idx, features[0].dtype)
            s_rows = heads.q_rep.at_pixels(features, taps=taps)
            with torch.no_grad():
                t_rows = heads.k_rep.at_pixels([f.float() for f in feat_tl], taps=taps)
        else:
            s_rows = gather_pixels(rep[:n_l], idx)
            t_rows = gather_pixels(rep_t, idx)
        losses["saacl"] = heads.saacl.rows_loss(s_rows, t_rows, y_a, w_a, tau)
        unlabeled_terms = cfg.weight_unsup * losses["unsup"] + cfg.weight_anco * losses["anco"]
        if gate is not None:  # pseudo-labels are only as good as the teacher (see update_reliability)
            unlabeled_terms = gate * unlabeled_terms
        total = (cfg.weight_sup * (losses["sup"] + losses["pasted"])
                 + ramp * (unlabeled_terms + cfg.weight_saacl * losses["saacl"]))
        with torch.no_grad():
            diagnostics = {
                "labeled_fraction": _class_fractions(y_l, torch.ones_like(y_l), cfg.num_classes),
                "pseudo_fraction": _class_fractions(teacher_labels, torch.ones_like(teacher_labels), cfg.num_classes),
                "taught_fraction": _class_fractions(pseudo, teacher_mask, cfg.num_classes),
                "mask_fraction": teacher_mask.float().sum() / (~from_labeled).float().sum().clamp_min(1.0),
            }
            if gate is not None:
                diagnostics["teacher_dice"] = gate
        return total, losses, diagnostics


@dataclass
class SupervisedStep:
    """The supervised-only baseline: L_sup on the labeled batch (same network, optimiser and schedule)."""

    cfg: object
    student: nn.Module

    def __call__(self, batches, host_gen, dev_gen, autocast) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        x_l, y_l = batches.labeled(cfg.finetune_labeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)
        if cfg.supervised_copy_paste:
            return self._with_copy_paste(batches, host_gen, dev_gen, autocast, x_l, y_l)
        if cfg.intensity_augmentation:
            x_l = augment.jitter(x_l, cfg.jitter_strength, dev_gen)
        with autocast():
            logits = self.student(x_l).logits
        loss = supervised_loss(logits.float(), y_l)
        return loss, {"sup": loss}

    def _with_copy_paste(self, batches, host_gen, dev_gen, autocast, x_l: Tensor, y_l: Tensor
                         ) -> tuple[Tensor, dict[str, Tensor]]:
        """The fair baseline (``supervised_copy_paste``): ACTION++'s strong view built from labeled images only.

        A second labeled batch takes the place of the unlabeled one and gets the same box masks, the
        same two paste directions and the same intensity augmentation as ACTION++'s strong view, so the
        copy-paste itself is not credited to the semi-supervised parts.  Every pixel of the mixed images
        has ground truth, so they are taught with the full supervised loss; one forward over both
        batches (BatchNorm statistics as in ACTION++'s fused forward).
        """
        cfg = self.cfg
        x_p, y_p = batches.labeled(cfg.finetune_unlabeled_batch, host_gen, dev_gen, cfg.geometric_augmentation)
        masks = augment.cutmix_masks(len(x_p), tuple(x_p.shape[2:]), dev_gen, x_p.device, cfg.cutmix_depth_fraction)
        if cfg.mix_bidirectional:
            masks = augment.alternate_masks(masks)
        masks = augment.unmixed_tail(masks, cfg.mix_share)
        x_s, y_s, _, _ = augment.mix_pair(x_p, y_p, torch.ones_like(y_p, dtype=torch.float32), x_l, y_l, masks)
        if cfg.intensity_augmentation:
            x_s = augment.gaussian_blur(augment.jitter(x_s, cfg.strong_jitter_strength, dev_gen), dev_gen)
        with autocast():
            logits = self.student(torch.cat([x_l, x_s])).logits.float()
        logits_l, logits_s = _split(logits, len(x_l))
        losses = {"sup": supervised_loss(logits_l, y_l), "pasted": supervised_loss(logits_s, y_s)}
        return cfg.weight_sup * (losses["sup"] + losses["pasted"]), losses


__all__ = ["FinetuneHeads", "FinetuneStep", "SupervisedStep", "labeled_dice", "view_agreement"]
