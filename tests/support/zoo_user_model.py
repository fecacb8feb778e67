"""User modules for import-spec tests (`support.zoo_user_model:ATTR`; tests/ is on sys.path)."""

from __future__ import annotations

import torch
from torch import nn


class TwoInputNet(nn.Module):
    """An image branch (Conv-BN) and a vector branch (Linear-BN1d) joined into two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(5, 8)
        self.bn1d = nn.BatchNorm1d(8)
        with torch.no_grad():
            for bn in (self.bn, self.bn1d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.5)
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = torch.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        vec = self.bn1d(self.fc(meta))
        return feat + vec, vec


def make_two_input_net() -> nn.Module:
    return TwoInputNet().eval()


class CountingNet(nn.Module):
    """Scales by how often it ran: the export bakes in one count, later calls differ (a mismatch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x) * float(self.calls)


def counting_net() -> nn.Module:
    return CountingNet().eval()


train_mode_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # left in train mode

not_a_module = 42


class PinnedBatchNet(nn.Module):
    """Conv-BN plus a learned [2, 4, 6, 6] offset: the batch can only be 2, and torch silently makes it static."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.offset = nn.Parameter(torch.randn(2, 4, 6, 6))
        with torch.no_grad():
            self.bn.running_mean.normal_(0, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.offset


def pinned_batch_net() -> nn.Module:
    """`PinnedBatchNet` in eval mode."""
    return PinnedBatchNet().eval()
