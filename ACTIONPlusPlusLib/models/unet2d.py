"""2D U-Net of spec 3.1 (PyMIC style: channels 16..256, encoder dropout, transposed-conv upsampling)."""

from __future__ import annotations

import torch
from torch import nn

from .common import NetOutput


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.01),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = ConvBlock(cin, cout, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    def __init__(self, cin: int, cskip: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        self.conv = ConvBlock(2 * cskip, cskip, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet2D(nn.Module):
    """Returns logits, latent = bottleneck x4, features [x4, d1, d2, d3, d4] (496 channels at base 16)."""

    ENCODER = ("inc", "down")  # the top-level modules of the contracting path (models.encoder_state)

    def __init__(self, in_channels: int = 1, num_classes: int = 4, base: int = 16) -> None:
        super().__init__()
        ch = [base, base * 2, base * 4, base * 8, base * 16]
        drop = [0.05, 0.1, 0.2, 0.3, 0.5]
        self.inc = ConvBlock(in_channels, ch[0], drop[0])
        self.down = nn.ModuleList(Down(ch[i], ch[i + 1], drop[i + 1]) for i in range(4))
        self.up = nn.ModuleList(Up(ch[4 - i], ch[3 - i]) for i in range(4))
        self.out = nn.Conv2d(ch[0], num_classes, 3, padding=1)
        self.feature_channels = [ch[4], ch[3], ch[2], ch[1], ch[0]]
        self.latent_channels = ch[4]

    def forward(self, x: torch.Tensor) -> NetOutput:
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x4 = skips[-1]
        feats = [x4]
        d = x4
        for i, up in enumerate(self.up):
            d = up(d, skips[3 - i])
            feats.append(d)
        return NetOutput(self.out(d), x4, feats)
