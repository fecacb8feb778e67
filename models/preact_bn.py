"""`preact-bn`: pre-activation residual blocks (BN-ReLU-Conv), plus a BN feeding a padding-free Conv."""

from __future__ import annotations

import torch
from torch import nn


class PreActBlock(nn.Module):
    """BN-ReLU-Conv twice, with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        y = self.conv1(torch.relu(self.bn1(x)))
        return x + self.conv2(torch.relu(self.bn2(y)))


class PreActBN(nn.Module):
    """Stem, two pre-activation blocks, a BN feeding a 1x1 padding-free Conv directly, a classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1)
        self.blocks = nn.Sequential(PreActBlock(width), PreActBlock(width))
        self.bn_direct = nn.BatchNorm2d(width)
        self.reduce = nn.Conv2d(width, width * 2, 1, 2, 0)
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward."""
        y = self.reduce(self.bn_direct(self.blocks(self.stem(x))))
        return self.fc(torch.relu(y).mean(dim=(2, 3)))
