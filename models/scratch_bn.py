"""`scratch-bn`: BatchNorm written from scratch with buffers and plain tensor ops (no nn.BatchNorm).

Training uses the batch statistics and updates the running ones with momentum; inference uses the running
statistics. The export is a Sub/Div/Sqrt/Mul/Add chain with constants, not a BatchNormalization node.
"""

from __future__ import annotations

import torch
from torch import nn


class ScratchBatchNorm(nn.Module):
    """Per-channel BN over [N, C] or [N, C, H, W] with `weight`/`bias` parameters and running buffers."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int, dims: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        shape = (1, channels) if dims == 2 else (1, channels, 1, 1)
        self.reduce = (0,) if dims == 2 else (0, 2, 3)
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize with batch statistics in training (updating the running ones), running ones otherwise."""
        if self.training:
            mean = x.mean(dim=self.reduce, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=self.reduce, keepdim=True)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
        else:
            mean, var = self.running_mean, self.running_var
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


class ScratchBN(nn.Module):
    """Conv → ScratchBatchNorm → ReLU twice, pooling, Linear → ScratchBatchNorm (2-D), classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = ScratchBatchNorm(width, 4)
        self.conv2 = nn.Conv2d(width, width, 3, 2, 1)
        self.bn2 = ScratchBatchNorm(width, 4)
        self.fc1 = nn.Linear(width, 32)
        self.bn3 = ScratchBatchNorm(32, 2)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward."""
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return self.fc2(torch.relu(self.bn3(self.fc1(y.mean(dim=(2, 3))))))
