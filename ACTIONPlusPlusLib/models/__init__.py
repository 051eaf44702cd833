"""Networks (2D U-Net, 3D V-Net) and the contrastive heads."""

from __future__ import annotations

from torch import Tensor, nn

from .common import NetOutput
from .unet2d import UNet2D
from .vnet3d import VNet3D


def build_network(cfg) -> nn.Module:
    """The segmentation network of ``cfg`` (2D U-Net or 3D V-Net), returning :class:`NetOutput`."""
    if cfg.dim == 2:
        return UNet2D(in_channels=1, num_classes=cfg.num_classes, base=cfg.base_channels)
    return VNet3D(in_channels=1, num_classes=cfg.num_classes, base=cfg.base_channels)


def encoder_state(network: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``state`` (a state dict of ``network``'s kind) that belong to its encoder, the
    top-level modules named in the network's ``ENCODER``."""
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in network.ENCODER}


__all__ = ["NetOutput", "UNet2D", "VNet3D", "build_network", "encoder_state"]
