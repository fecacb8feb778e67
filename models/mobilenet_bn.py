"""`mobilenet-bn`: MobileNet-style depthwise separable blocks, every BN with eps 1e-3."""

from __future__ import annotations

import torch
from torch import nn

EPS = 1e-3


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=EPS),
        nn.ReLU6(),
    )


class MobileNetBN(nn.Module):
    """Stem, depthwise (groups = channels) + pointwise Conv-BN-ReLU6 pairs, pooling and a classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers = [_conv_bn(3, 16, 3, 2, 1)]
        for cin, cout, stride in ((16, 24, 1), (24, 32, 2), (32, 32, 1)):
            layers += [_conv_bn(cin, cin, 3, stride, cin), _conv_bn(cin, cout, 1, 1, 1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward."""
        return self.fc(self.features(x).mean(dim=(2, 3)))
