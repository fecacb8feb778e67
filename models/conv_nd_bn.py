"""`conv1d-bn` and `conv3d-bn`: Conv-BN-ReLU stacks over sequences and volumes."""

from __future__ import annotations

import torch
from torch import nn


class ConvNdBN(nn.Module):
    """Two Conv-BN-ReLU stages (the second strided and bias-less) of dimension 1 or 3, then a pooled head."""

    def __init__(self, dims: int, channels: int, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        conv = {1: nn.Conv1d, 3: nn.Conv3d}[dims]
        norm = {1: nn.BatchNorm1d, 3: nn.BatchNorm3d}[dims]
        self.body = nn.Sequential(
            conv(channels, width, 3, 1, 1), norm(width), nn.ReLU(),
            conv(width, width * 2, 3, 2, 1, bias=False), norm(width * 2), nn.ReLU(),
        )
        self.dims = dims
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward."""
        y = self.body(x)
        return self.fc(y.mean(dim=tuple(range(2, 2 + self.dims))))
