"""`frozen-bn`: a frozen BatchNorm (detection-backbone style) computed as x * scale + shift."""

from __future__ import annotations

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all buffers; exports as Mul + Add."""

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x * s + t` with `s = weight / sqrt(var + eps)`, `t = bias - mean * s`, broadcast on channels."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class FrozenBN(nn.Module):
    """Conv → FrozenBatchNorm2d → ReLU stages, pooling and a classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False), FrozenBatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, 1, 1), FrozenBatchNorm2d(width * 2), nn.ReLU(),
        )
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward."""
        return self.fc(self.body(x).mean(dim=(2, 3)))
