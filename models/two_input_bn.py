"""`two-input-bn`: a network of two inputs, an image and a feature vector, each with its own BatchNorms."""

from __future__ import annotations

import torch
from torch import nn


class TwoInputBN(nn.Module):
    """Image: Conv-BN-ReLU twice and pooling; features: Linear-BN1d-ReLU; joined by concatenation, then Linear."""

    def __init__(self, channels: int = 3, features: int = 6, width: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        self.conv_branch = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dense_branch = nn.Sequential(nn.Linear(features, width), nn.BatchNorm1d(width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Class scores from an image [N, C, H, W] and a feature vector [N, F]."""
        return self.head(torch.cat([self.conv_branch(image), self.dense_branch(features)], dim=1))
