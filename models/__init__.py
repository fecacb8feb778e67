"""Training-side reference models: a registry of PyTorch modules with realistic BN statistics.

Only `foldnorm export` (and the tests) import this package; it needs torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from foldnorm.errors import InputSpecError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the model and what it eats."""

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    description: str

    def build(self, seed: int = 0) -> nn.Module:
        """The module in eval mode, norms randomized and BN statistics calibrated."""
        from .calibrate import calibrate

        return calibrate(self.factory(), self.input_shape, seed=seed)


def _resnet_bn() -> nn.Module:
    from .resnet_bn import ResNetBN

    return ResNetBN()


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet-bn", _resnet_bn, (1, 3, 224, 224),
                  "ResNet-style Conv-BN-ReLU residual blocks and a Conv-GroupNorm block"),
    )
}

DEFAULT_MODEL = "resnet-bn"


def get_spec(name: str) -> ModelSpec:
    """The registry entry called `name`."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputSpecError(
            f"no built-in model named {name!r}; choose from: {', '.join(REGISTRY)} (or give a .onnx path)"
        ) from None


__all__ = ["DEFAULT_MODEL", "REGISTRY", "ModelSpec", "get_spec"]
