"""`resnet18-bn`: ResNet-18 in torchvision's layout, written without torchvision: a 7x7 stem and max pool,
four stages of two BasicBlocks (64 to 512 channels), 20 Conv-BN pairs. The int8 benchmarks' model."""

from __future__ import annotations

import torch
from torch import nn

from .resnet_bn import BasicBlock


class ResNet18BN(nn.Module):
    """ResNet-18: stem, stages [2, 2, 2, 2] of BasicBlocks, global pooling and a 1000-way classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))
