"""Training-side reference models: a registry of PyTorch modules with realistic BN statistics.

Only `foldnorm export` (and the tests) import this package; it needs torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from foldnorm.errors import InputSpecError

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: how to build the model and what it eats."""

    name: str
    factory: Callable[[], nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]
    description: str

    def build(self, seed: int = 0) -> nn.Module:
        """The module in eval mode, norms randomized and BN statistics calibrated."""
        from .calibrate import calibrate

        return calibrate(self.factory(), self.input_shapes, seed=seed)

    def example_inputs(self, seed: int = 0) -> list[torch.Tensor]:
        """Seeded N(0, 1) tensors of the input shapes, one per forward argument."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        return [torch.randn(shape, generator=gen) for shape in self.input_shapes]


def _lazy(module: str, cls: str, **kwargs: Any) -> Callable[[], nn.Module]:
    """A factory that imports `models.<module>` (and so torch) only when the model is built."""

    def factory() -> nn.Module:
        built: nn.Module = getattr(importlib.import_module(f".{module}", __name__), cls)(**kwargs)
        return built

    return factory


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet-bn", _lazy("resnet_bn", "ResNetBN"), ((1, 3, 224, 224),),
                  "ResNet-style Conv-BN-ReLU residual blocks and a Conv-GroupNorm block"),
        ModelSpec("resnet18-bn", _lazy("resnet18_bn", "ResNet18BN"), ((1, 3, 224, 224),),
                  "ResNet-18 (torchvision's layout, without torchvision): 20 Conv-BN, the int8 benchmarks' model"),
        ModelSpec("mobilenet-bn", _lazy("mobilenet_bn", "MobileNetBN"), ((1, 3, 32, 32),),
                  "depthwise separable Conv-BN-ReLU6 blocks, BN eps 1e-3"),
        ModelSpec("decoder-bn", _lazy("decoder_bn", "DecoderBN"), ((1, 3, 16, 16),),
                  "ConvTranspose-BN upsampling stages with groups 1, 2 and 4"),
        ModelSpec("mlp-bn1d", _lazy("mlp_bn1d", "MlpBN1d"), ((1, 32),),
                  "Linear-BatchNorm1d layers, with and without Linear bias"),
        ModelSpec("conv1d-bn", _lazy("conv_nd_bn", "ConvNdBN", dims=1, channels=4), ((1, 4, 64),),
                  "Conv1d-BatchNorm1d-ReLU stages over sequences"),
        ModelSpec("conv3d-bn", _lazy("conv_nd_bn", "ConvNdBN", dims=3, channels=2), ((1, 2, 8, 8, 8),),
                  "Conv3d-BatchNorm3d-ReLU stages over volumes"),
        ModelSpec("unet-gn", _lazy("unet_gn", "UNetGN"), ((1, 3, 32, 32),),
                  "small U-Net with GroupNorm (nothing to fold, everything to keep)"),
        ModelSpec("transformer-ln", _lazy("transformer_ln", "TransformerLN"), ((1, 16, 32),),
                  "pre-norm transformer encoder block with LayerNorm"),
        ModelSpec("stylenet-in", _lazy("stylenet_in", "StyleNetIN"), ((1, 3, 32, 32),),
                  "Conv-InstanceNorm blocks: affine, plain, and with running statistics"),
        ModelSpec("preact-bn", _lazy("preact_bn", "PreActBN"), ((1, 3, 32, 32),),
                  "pre-activation BN-ReLU-Conv blocks and a BN feeding a padding-free Conv"),
        ModelSpec("scratch-bn", _lazy("scratch_bn", "ScratchBN"), ((1, 3, 32, 32),),
                  "BatchNorm written from scratch with buffers and tensor ops (no BN node)"),
        ModelSpec("frozen-bn", _lazy("frozen_bn", "FrozenBN"), ((1, 3, 32, 32),),
                  "frozen BatchNorm computed as Mul/Add after Convs"),
        ModelSpec("two-input-bn", _lazy("two_input_bn", "TwoInputBN"), ((1, 3, 32, 32), (1, 6)),
                  "two inputs (an image and a feature vector): Conv-BN-ReLU and Linear-BN1d branches, joined"),
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
