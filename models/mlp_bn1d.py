"""`mlp-bn1d`: Linear + BatchNorm1d layers, with and without Linear bias."""

from __future__ import annotations

import torch
from torch import nn


class MlpBN1d(nn.Module):
    """Linear(bias)-BN1d-ReLU, Linear(no bias)-BN1d-ReLU, then a classifier."""

    def __init__(self, features: int = 32, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier forward on [N, features]."""
        return self.fc(self.body(x))
