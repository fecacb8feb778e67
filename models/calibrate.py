"""Give reference modules realistic state: random affine params and BN statistics from train-mode passes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _is_norm(module: nn.Module) -> bool:
    """A torch normalization, or a hand-written BN that keeps `running_mean`/`running_var` tensors."""
    return isinstance(module, _NORMS) or isinstance(getattr(module, "running_var", None), torch.Tensor)


def randomize_norms(module: nn.Module, seed: int = 0) -> None:
    """Random gamma/beta on every affine normalization; random running stats on BNs that track them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if not _is_norm(m):
                continue
            weight = getattr(m, "weight", None)
            bias = getattr(m, "bias", None)
            if isinstance(weight, torch.Tensor):
                weight.copy_(torch.rand(weight.shape, generator=g) * 1.5 + 0.25)
            if isinstance(bias, torch.Tensor):
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.5)
            mean = getattr(m, "running_mean", None)
            var = getattr(m, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(torch.randn(mean.shape, generator=g) * 0.5)
                var.copy_(torch.rand(var.shape, generator=g) * 2.0 + 0.1)


def calibrate(module: nn.Module, input_shapes: Sequence[tuple[int, ...]], steps: int = 4,
              seed: int = 0) -> nn.Module:
    """Randomize norms, update BN statistics with a few train-mode passes on random data (one tensor per input
    shape, batch at least 4), return eval mode.

    Modules whose statistics are frozen (no train-mode update) keep the random statistics.
    """
    randomize_norms(module, seed)
    g = torch.Generator().manual_seed(seed + 1)
    batches = [(max(shape[0], 4), *shape[1:]) for shape in input_shapes]
    module.train()
    with torch.no_grad():
        for _ in range(steps):
            module(*(torch.randn(batch, generator=g) * 1.5 + 0.3 for batch in batches))
    return module.eval()
