"""Training data held on the device, and batch sampling with on-device augmentation.

2D: every slice is resized once to the patch size (bilinear image, nearest label) and kept as one
tensor; a batch is an index draw plus a batched affine augmentation.  3D: volumes are kept whole
(zero-padded to at least the patch, spec 2.2), a batch is random crops after rot90/flip.
Random choices that select Python-side slices come from a host generator; tensor-valued randomness
from the device generator.  Both are part of the checkpoint, so a resumed run replays the same batches.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.types import Case, to_network_order
from . import augment


def _slices_2d(cases: list[Case], with_labels: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    out = []
    for case in cases:
        for z in range(case.image.shape[0]):
            out.append((case.image[z], case.label[z] if with_labels and case.label is not None else None))
    return out


def _resize_stack(items: list[tuple[np.ndarray, np.ndarray | None]], size: list[int], device: torch.device, with_labels: bool):
    images, labels = [], []
    for img, lab in items:
        t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
        images.append(F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0])
        if with_labels:
            lt = torch.from_numpy(np.ascontiguousarray(lab).astype(np.int64))[None, None].float()
            labels.append(F.interpolate(lt, size=size, mode="nearest")[0, 0].long())
    img = torch.stack(images).to(device)
    return img, (torch.stack(labels).to(device) if with_labels else None)


def _pad_to(volume: np.ndarray, patch: list[int]) -> np.ndarray:
    pads = []
    for size, p in zip(volume.shape, patch):
        if size <= p:
            extra = (p - size) // 2 + 3
            pads.append((extra, extra))
        else:
            pads.append((0, 0))
    return np.pad(volume, pads) if any(a or b for a, b in pads) else volume


class BatchSource:
    """Samples (labeled images, labels) and unlabeled images for one training step."""

    def __init__(self, cfg, labeled: list[Case], unlabeled: list[Case], device: torch.device) -> None:
        self.cfg = cfg
        self.dim = cfg.dim
        self.device = device
        self.patch = list(cfg.patch_size)
        if self.dim == 2:
            self.lab_img, self.lab_lab = _resize_stack(_slices_2d(labeled, True), self.patch, device, True)
            un = _slices_2d(unlabeled, False)
            if un:
                self.unl_img, _ = _resize_stack(un, self.patch, device, False)
            else:
                self.unl_img = self.lab_img[:0]
            self.n_lab, self.n_unl = len(self.lab_img), len(self.unl_img)
        else:
            self.lab_vols = [torch.from_numpy(_pad_to(to_network_order(c.image, 3).astype(np.float32), self.patch)).to(device) for c in labeled]
            self.lab_labs = [torch.from_numpy(_pad_to(to_network_order(c.label, 3).astype(np.int64), self.patch)).to(device) for c in labeled]
            self.unl_vols = [torch.from_numpy(_pad_to(to_network_order(c.image, 3).astype(np.float32), self.patch)).to(device) for c in unlabeled]
            self.n_lab, self.n_unl = len(self.lab_vols), len(self.unl_vols)

    # ------------------------------------------------------------------------------------------------
    def _indices(self, count: int, population: int, host_gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, population, (count,), generator=host_gen)

    def _crop(self, vols: list[torch.Tensor], labs: list[torch.Tensor] | None, idx: torch.Tensor, host_gen: torch.Generator):
        images, labels = [], []
        for i in idx.tolist():  # host ints: no device sync
            vol = vols[i]
            starts = [int(torch.randint(0, s - p + 1, (1,), generator=host_gen)) for s, p in zip(vol.shape, self.patch)]
            sl = tuple(slice(a, a + p) for a, p in zip(starts, self.patch))
            images.append(vol[sl][None])
            if labs is not None:
                labels.append(labs[i][sl])
        return torch.stack(images), (torch.stack(labels) if labs is not None else None)

    def labeled(self, count: int, host_gen: torch.Generator, dev_gen: torch.Generator, augment_geometry: bool = True):
        idx = self._indices(count, self.n_lab, host_gen)
        if self.dim == 2:
            dev_idx = idx.to(self.device)
            img, lab = self.lab_img[dev_idx], self.lab_lab[dev_idx]
            if augment_geometry:
                img, lab = augment.geometric_2d(img, lab, dev_gen)
            return img, lab
        img, lab = self._crop(self.lab_vols, self.lab_labs, idx, host_gen)
        if augment_geometry:
            img, lab = augment.geometric_3d(img, lab, host_gen)
        return img, lab

    def unlabeled(self, count: int, host_gen: torch.Generator, dev_gen: torch.Generator, augment_geometry: bool = True):
        if self.n_unl == 0:
            raise RuntimeError("no unlabeled data")
        idx = self._indices(count, self.n_unl, host_gen)
        if self.dim == 2:
            img = self.unl_img[idx.to(self.device)]
            if augment_geometry:
                img, _ = augment.geometric_2d(img, None, dev_gen)
            return img
        img, _ = self._crop(self.unl_vols, None, idx, host_gen)
        if augment_geometry:
            img, _ = augment.geometric_3d(img, None, host_gen)
        return img
