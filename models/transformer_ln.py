"""`transformer-ln`: a pre-norm transformer encoder block with LayerNorm."""

from __future__ import annotations

import torch
from torch import nn


class TransformerLN(nn.Module):
    """LayerNorm → single-head self-attention → residual, LayerNorm → MLP → residual, final LayerNorm."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ln_out = nn.LayerNorm(dim, eps=1e-6)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Forward on tokens [N, T, dim]."""
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        x = x + self.proj(attn @ v)
        x = x + self.mlp(self.ln2(x))
        return self.ln_out(x)
