"""A tiny PyTorch model for `foldnorm bench tests/bench_models:...` style import specs in tests."""

from __future__ import annotations

import torch
from torch import nn


def tiny() -> nn.Module:
    """Conv-BN-ReLU, grouped Conv-BN, GroupNorm, pooling and Linear, BN statistics randomized."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), nn.GroupNorm(2, 8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.3, 2.0)
                m.bias.normal_(0, 0.7)
                m.running_mean.normal_(0, 0.8)
                m.running_var.uniform_(0.2, 3.0)
    return model.eval()
