"""3D V-Net of spec 3.2 (plain conv blocks, additive skips, dropout on x5 and x9 while training)."""

from __future__ import annotations

import torch
from torch import nn

from .common import NetOutput


def _stage(n: int, cin: int, cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class VNet3D(nn.Module):
    """Returns logits, latent = u5 (first decoder stage, as the authors' code), features [u5, u6, u7, u8, x9]."""

    # the top-level modules of the contracting path, bottleneck included (models.encoder_state)
    ENCODER = ("block1", "down1", "block2", "down2", "block3", "down3", "block4", "down4", "block5")

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base: int = 16) -> None:
        super().__init__()
        c = [base, base * 2, base * 4, base * 8, base * 16]
        self.block1 = _stage(1, in_channels, c[0])
        self.down1 = _down(c[0], c[1])
        self.block2 = _stage(2, c[1], c[1])
        self.down2 = _down(c[1], c[2])
        self.block3 = _stage(3, c[2], c[2])
        self.down3 = _down(c[2], c[3])
        self.block4 = _stage(3, c[3], c[3])
        self.down4 = _down(c[3], c[4])
        self.block5 = _stage(3, c[4], c[4])
        self.up5 = _up(c[4], c[3])
        self.block6 = _stage(3, c[3], c[3])
        self.up6 = _up(c[3], c[2])
        self.block7 = _stage(3, c[2], c[2])
        self.up7 = _up(c[2], c[1])
        self.block8 = _stage(2, c[1], c[1])
        self.up8 = _up(c[1], c[0])
        self.block9 = _stage(1, c[0], c[0])
        self.dropout = nn.Dropout3d(0.5)
        self.out = nn.Conv3d(c[0], num_classes, 1)
        self.feature_channels = [c[3], c[2], c[1], c[0], c[0]]
        self.latent_channels = c[3]

    def forward(self, x: torch.Tensor) -> NetOutput:
        x1 = self.block1(x)
        x2 = self.block2(self.down1(x1))
        x3 = self.block3(self.down2(x2))
        x4 = self.block4(self.down3(x3))
        x5 = self.dropout(self.block5(self.down4(x4)))  # Dropout3d is the identity in eval()
        u5 = self.up5(x5) + x4
        u6 = self.up6(self.block6(u5)) + x3
        u7 = self.up7(self.block7(u6)) + x2
        u8 = self.up8(self.block8(u7)) + x1
        x9 = self.block9(u8)
        logits = self.out(self.dropout(x9))
        return NetOutput(logits, u5, [u5, u6, u7, u8, x9])
