"""Small models for bench/backend tests: an ONNX Conv+BN(+Add+Relu) and a PyTorch module for import specs."""

from __future__ import annotations

import numpy as np
import onnx

from support.builders import conv_bn


def conv_bn_onnx(rng: np.random.Generator, tail: bool = False) -> onnx.ModelProto:
    """Conv + BN with random statistics; `tail` adds a Constant-fed Add and a Relu after the BN."""
    if not tail:
        return conv_bn(rng, bn_attrs="<epsilon = 0.001>")
    return conv_bn(rng, bn_attrs="<epsilon = 0.001>", bn_out="b", tail=[
        "one = Constant <value = float {1.0}> ()", "s = Add (b, one)", "y = Relu (s)"])


def tiny() -> object:
    """Conv-BN-ReLU, grouped Conv-BN, GroupNorm, pooling and Linear, BN statistics randomized."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), nn.GroupNorm(2, 8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.3, 2.0)
                m.bias.normal_(0, 0.7)
                m.running_mean.normal_(0, 0.8)
                m.running_var.uniform_(0.2, 3.0)
    return model.eval()
