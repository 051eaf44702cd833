"""Networks (2D U-Net, 3D V-Net) and the contrastive heads."""

from __future__ import annotations

from torch import nn

from .common import NetOutput
from .unet2d import UNet2D
from .vnet3d import VNet3D


def build_network(cfg) -> nn.Module:
    """The segmentation network of ``cfg`` (2D U-Net or 3D V-Net), returning :class:`NetOutput`."""
    if cfg.dim == 2:
        return UNet2D(in_channels=1, num_classes=cfg.num_classes, base=cfg.base_channels)
    return VNet3D(in_channels=1, num_classes=cfg.num_classes, base=cfg.base_channels)


__all__ = ["NetOutput", "UNet2D", "VNet3D", "build_network"]
