"""Batched, on-device augmentations (spec 2, 5.1, 6.1; decisions D7, D8, D14).

Every random draw uses the trainer's ``torch.Generator`` so that a resumed run replays the same
augmentations.  Nothing here loops over pixels; loops run over the few samples of a batch at most.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _bernoulli(n: int, p: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def geometric_2d(image: torch.Tensor, label: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ACDC (D7): with p = 0.5 a rot90 (k in 0..3) plus a flip, otherwise a rotation in [-20, 20) deg.

    ``image`` (N, 1, H, W) float, ``label`` (N, H, W) long.  Implemented as one affine ``grid_sample``
    per batch (bilinear for images, nearest for labels): rot90 and flips are affine maps too.
    """
    n, device = image.shape[0], image.device
    use_rot90 = _bernoulli(n, 0.5, gen, device)
    k = torch.randint(0, 4, (n,), generator=gen, device=device).float()
    flip_axis = torch.randint(0, 2, (n,), generator=gen, device=device)
    angle_free = _uniform(n, -20.0, 20.0, gen, device) * math.pi / 180.0
    angle = torch.where(use_rot90, k * math.pi / 2, angle_free)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    flip = torch.ones(n, 2, device=device)
    flip[:, 0] = torch.where(use_rot90 & (flip_axis == 0), -1.0, 1.0)
    flip[:, 1] = torch.where(use_rot90 & (flip_axis == 1), -1.0, 1.0)
    theta[:, :, :2] = theta[:, :, :2] * flip[:, None, :]
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if label is not None:
        lab = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        label = lab[:, 0].round().long()
    return image, label


def geometric_3d(image: torch.Tensor, label: torch.Tensor | None, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LA (spec 2.2): rot90 in the (X, Y) plane with k in 0..3, then a flip along X or Y.

    Works per sample (a batch holds 1-2 volumes); the patch must be square in-plane.  ``gen`` is the
    trainer's HOST generator: the choices are Python ints, so no device sync is needed.
    """
    k = torch.randint(0, 4, (image.shape[0],), generator=gen).tolist()
    axis = torch.randint(0, 2, (image.shape[0],), generator=gen).tolist()
    imgs, labs = [], []
    for i in range(image.shape[0]):
        img = torch.flip(torch.rot90(image[i], k[i], dims=(1, 2)), dims=(1 + axis[i],))
        imgs.append(img)
        if label is not None:
            labs.append(torch.flip(torch.rot90(label[i], k[i], dims=(0, 1)), dims=(axis[i],)))
    return torch.stack(imgs), (torch.stack(labs) if label is not None else None)


def jitter(image: torch.Tensor, strength: float, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Brightness x*f and contrast (x - mean)*f + mean, f ~ U(1 +- strength), each with prob. ``p``,
    in random order, scale preserving and without clamping (D8)."""
    n, device = image.shape[0], image.device
    b = torch.where(_bernoulli(n, p, gen, device), _uniform(n, 1 - strength, 1 + strength, gen, device), torch.ones(n, device=device))
    c = torch.where(_bernoulli(n, p, gen, device), _uniform(n, 1 - strength, 1 + strength, gen, device), torch.ones(n, device=device))
    brightness_first = _bcast(_bernoulli(n, 0.5, gen, device), image)
    mean = image.flatten(1).mean(dim=1)
    b, c, mean = _bcast(b, image), _bcast(c, image), _bcast(mean, image)
    a1 = (image * b - mean * b) * c + mean * b  # brightness, then contrast around the new mean
    a2 = ((image - mean) * c + mean) * b  # contrast, then brightness
    return torch.where(brightness_first, a1, a2)


def gaussian_blur(image: torch.Tensor, gen: torch.Generator, p: float = 0.5, sigma: tuple[float, float] = (0.15, 1.15)) -> torch.Tensor:
    """In-plane Gaussian blur with sigma ~ U(sigma) per sample, applied with probability ``p``.

    2D images (N, 1, H, W) blur over (H, W); 3D volumes (N, 1, X, Y, Z) over (X, Y) (per slice).
    Separable depthwise convolution with a per-sample kernel (samples as channels).
    """
    n, device = image.shape[0], image.device
    apply = _bernoulli(n, p, gen, device)
    s = _uniform(n, sigma[0], sigma[1], gen, device)
    radius = int(math.ceil(3 * sigma[1]))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / s[:, None].to(image.dtype)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, K)
    spatial = image.shape[2:]
    x = image.transpose(0, 1)  # (1, N, ...): samples become channels of a depthwise conv
    if image.dim() == 4:
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n)
    else:
        x = F.conv3d(F.pad(x, (0, 0, 0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None, None], groups=n)
        x = F.conv3d(F.pad(x, (0, 0, radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :, None], groups=n)
    blurred = x.transpose(0, 1).reshape(n, 1, *spatial)
    return torch.where(_bcast(apply, image), blurred, image)


def cutmix_masks(n: int, spatial: tuple[int, ...], gen: torch.Generator, device: torch.device,
                 depth_fraction: float = 0.25) -> torch.Tensor:
    """Box masks of about half the in-plane area (spec 6.1 3b, 12.13); 1 = keep the sample, 0 = partner.

    In-plane: width w ~ U_int[H/2 + 1, H - 1], height round(H*W/2 / w), top-left uniform.  3D boxes
    span ``depth_fraction`` of the depth (the code's 20 of 80 slices: 0.25), at a uniform offset.
    """
    h, w = spatial[0], spatial[1]
    bw = torch.randint(h // 2 + 1, max(h // 2 + 2, h), (n,), generator=gen, device=device)
    bh = torch.clamp(torch.round((h * w / 2) / bw).long(), 1, w)
    x0 = (torch.rand(n, generator=gen, device=device) * (h - bw + 1).float()).long()
    y0 = (torch.rand(n, generator=gen, device=device) * (w - bh + 1).float()).long()
    ii = torch.arange(h, device=device)[None, :, None]
    jj = torch.arange(w, device=device)[None, None, :]
    inside = (ii >= x0[:, None, None]) & (ii < (x0 + bw)[:, None, None]) & (jj >= y0[:, None, None]) & (jj < (y0 + bh)[:, None, None])
    if len(spatial) == 3:
        d = spatial[2]
        depth = min(d, max(1, int(d * float(depth_fraction))))
        z0 = (torch.rand(n, generator=gen, device=device) * (d - depth + 1)).long()
        kk = torch.arange(d, device=device)[None, None, None, :]
        inside = inside[..., None] & (kk >= z0[:, None, None, None]) & (kk < (z0 + depth)[:, None, None, None])
    return (~inside).float()


def classmix_masks(pseudo: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Keep a random half (floor(n/2)) of the classes present in each sample's pseudo-label (spec 6.1)."""
    n = pseudo.shape[0]
    device = pseudo.device
    onehot = F.one_hot(pseudo.flatten(1), num_classes).amax(dim=1).bool()  # (N, C) present classes
    scores = torch.rand(n, num_classes, generator=gen, device=device).masked_fill(~onehot, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each class among present ones first
    keep = (rank < (onehot.sum(dim=1, keepdim=True) // 2)) & onehot  # (N, C)
    return keep.gather(1, pseudo.flatten(1)).view_as(pseudo).float()


def mix(image: torch.Tensor, pseudo: torch.Tensor, conf: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each sample i with partner (i + 1) mod N: x_i * M + x_j * (1 - M); same for labels and conf."""
    partner = torch.roll(torch.arange(image.shape[0], device=image.device), -1)
    m_img = masks[:, None]
    image = image * m_img + image[partner] * (1 - m_img)
    pseudo = torch.where(masks.bool(), pseudo, pseudo[partner])
    conf = conf * masks + conf[partner] * (1 - masks)
    return image, pseudo, conf


def alternate_masks(masks: torch.Tensor) -> torch.Tensor:
    """Invert the mix masks of every other sample (odd indices): those keep what the others give away."""
    flip = (torch.arange(masks.shape[0], device=masks.device) % 2 == 1).view(-1, *([1] * (masks.dim() - 1)))
    return torch.where(flip, 1 - masks, masks)


def unmixed_tail(masks: torch.Tensor, share: float) -> torch.Tensor:
    """Masks with every sample from index ``round(share * n)`` on set to 1 (keep the sample whole)."""
    keep = int(round(float(share) * masks.shape[0]))
    if keep >= masks.shape[0]:
        return masks
    tail = (torch.arange(masks.shape[0], device=masks.device) >= keep).view(-1, *([1] * (masks.dim() - 1)))
    return torch.where(tail, torch.ones_like(masks), masks)


def mix_pair(image: torch.Tensor, labels: torch.Tensor, conf: torch.Tensor, partner_image: torch.Tensor,
             partner_labels: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Copy-paste between two batches (bidirectional copy-paste, BCP): ``x * M + partner * (1 - M)``.

    ``image`` (N, 1, *S) unlabeled with teacher ``labels``/``conf`` (N, *S); ``partner_*`` labeled
    images and ground truth (at least N of them are cycled through).  Returns the mixed images, labels,
    confidences (1 on the partner's pixels: ground truth) and a bool map of the pixels that came from
    the partner.
    """
    n = image.shape[0]
    index = torch.arange(n, device=image.device) % partner_image.shape[0]
    m_img = masks[:, None]
    mixed = image * m_img + partner_image[index] * (1 - m_img)
    from_partner = ~masks.bool()
    mixed_labels = torch.where(from_partner, partner_labels[index], labels)
    mixed_conf = torch.where(from_partner, torch.ones_like(conf), conf)
    return mixed, mixed_labels, mixed_conf, from_partner


def random_dihedral(n: int, spatial: tuple[int, ...], gen: torch.Generator) -> list[tuple[int, tuple[int, ...]]]:
    """Per sample, an exactly invertible grid transform: a rot90 in the first two spatial axes (only
    when they are equal in size) and a flip of each spatial axis with p = 0.5.  Drawn on ``gen`` (host)."""
    square = len(spatial) >= 2 and spatial[0] == spatial[1]
    turns = torch.randint(0, 4 if square else 1, (n,), generator=gen).tolist()
    flips = (torch.rand(n, len(spatial), generator=gen) < 0.5).tolist()
    return [(k, tuple(axis for axis, f in enumerate(row) if f)) for k, row in zip(turns, flips)]


def apply_dihedral(x: torch.Tensor, transforms: list[tuple[int, tuple[int, ...]]], inverse: bool = False) -> torch.Tensor:
    """Apply (or undo) :func:`random_dihedral`'s transforms to (N, C, *spatial), one per sample."""
    out = []
    for sample, (k, flips) in zip(x, transforms):
        dims = tuple(1 + axis for axis in flips)  # spatial axis -> axis of the (C, *spatial) sample
        if not inverse:
            sample = torch.rot90(sample, k, dims=(1, 2)) if k else sample
            sample = torch.flip(sample, dims) if dims else sample
        else:
            sample = torch.flip(sample, dims) if dims else sample
            sample = torch.rot90(sample, -k, dims=(1, 2)) if k else sample
        out.append(sample)
    return torch.stack(out)
