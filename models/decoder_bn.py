"""`decoder-bn`: an upsampling decoder of grouped ConvTranspose-BN stages (the classic groups > 1 fold bug)."""

from __future__ import annotations

import torch
from torch import nn


class DecoderBN(nn.Module):
    """Conv-BN encoder step, then ConvTranspose-BN stages with groups 1, 2 and 4 (with and without bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.up1 = nn.Sequential(nn.ConvTranspose2d(16, 16, 4, 2, 1, groups=2, bias=False), nn.BatchNorm2d(16),
                                 nn.ReLU())
        self.up2 = nn.Sequential(nn.ConvTranspose2d(16, 12, 3, 2, 1, output_padding=1, groups=4),
                                 nn.BatchNorm2d(12), nn.ReLU())
        self.head = nn.Sequential(nn.ConvTranspose2d(12, 3, 3, 1, 1), nn.BatchNorm2d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image-to-image forward (twice the input resolution)."""
        return self.head(self.up2(self.up1(self.down(x))))
