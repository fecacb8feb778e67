"""`stylenet-in`: a style-transfer style network with InstanceNorm (affine, plain, and with running stats)."""

from __future__ import annotations

import torch
from torch import nn


class StyleNetIN(nn.Module):
    """Conv-IN(affine)-ReLU, Conv-IN(no affine)-ReLU, Conv-IN(affine, running stats)-ReLU, output Conv."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1), nn.InstanceNorm2d(16, affine=True), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 2, 1), nn.InstanceNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, 1, 1), nn.InstanceNorm2d(16, affine=True, track_running_stats=True), nn.ReLU(),
            nn.Conv2d(16, 3, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Image-to-image forward."""
        return self.body(x)
