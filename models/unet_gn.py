"""`unet-gn`: a small U-Net with GroupNorm everywhere (nothing to fold, everything to protect)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_gn(cin: int, cout: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.GroupNorm(groups, cout), nn.SiLU())


class UNetGN(nn.Module):
    """Two-level encoder/decoder with a skip connection; GroupNorm with 4 and 8 groups."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _conv_gn(3, 16, 4)
        self.enc2 = _conv_gn(16, 32, 8)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = _conv_gn(48, 16, 4)
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image-to-image forward."""
        skip = self.enc1(x)
        deep = self.up(self.enc2(self.pool(skip)))
        return self.out(self.dec(torch.cat([skip, deep], dim=1)))
