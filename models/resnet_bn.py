"""`resnet-bn`: a small ResNet-style network: Conv-BN-ReLU residual blocks plus a GroupNorm block."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two Conv-BN stages with a residual connection (a 1x1 Conv-BN projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.down(x))


class ResNetBN(nn.Module):
    """Stem, three residual stages, a Conv-GroupNorm block, global pooling and a classifier."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=True), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, width * 2, stride=2)
        self.layer3 = BasicBlock(width * 2, width * 4, stride=2)
        self.gn_block = nn.Sequential(
            nn.Conv2d(width * 4, width * 4, 3, 1, 1), nn.GroupNorm(8, width * 4), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        x = self.gn_block(x)
        return self.fc(torch.flatten(self.pool(x), 1))
