"""Small models for bench/backend tests: ONNX Conv+BN(+Add+Relu), a two-input ONNX model with dynamic dims, and
PyTorch modules for import specs."""

from __future__ import annotations

import numpy as np
import onnx

from support.builders import bn_inputs, bn_params, conv_bn, parse


def conv_bn_onnx(rng: np.random.Generator, tail: bool = False, batch: int | None = None) -> onnx.ModelProto:
    """Conv + BN with random statistics; `tail` adds a Constant-fed Add and a Relu after the BN; `batch` makes
    the batch axis static at that size."""
    model = conv_bn(rng, bn_attrs="<epsilon = 0.001>") if not tail else conv_bn(
        rng, bn_attrs="<epsilon = 0.001>", bn_out="b", tail=[
            "one = Constant <value = float {1.0}> ()", "s = Add (b, one)", "y = Relu (s)"])
    if batch is not None:
        for value in (*model.graph.input, *model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = batch
        onnx.checker.check_model(model, full_check=True)
    return model


def two_input_onnx(rng: np.random.Generator) -> onnx.ModelProto:
    """Inputs `image` [N, 4, H, W] (H, W dynamic) and `features` [N, 3]: Conv-BN on the image, Gemm-BN on the
    features, broadcast-added per channel; random BN statistics."""
    arrays = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32),
              "G": rng.normal(0, 0.5, (6, 3)).astype(np.float32), "GB": rng.normal(0, 0.5, 6).astype(np.float32),
              **bn_params("bn", 6, rng), **bn_params("bn2", 6, rng)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, H, W] image, float[N, 3] features) => (float[N, 6, H, W] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (image, W)
        b = BatchNormalization (c, {bn_inputs("bn")})
        m = Gemm <transB = 1> (features, G, GB)
        n = BatchNormalization (m, {bn_inputs("bn2")})
        axes = Constant <value = int64[2] {{2, 3}}> ()
        u = Unsqueeze (n, axes)
        y = Add (b, u)
    }}
    """, arrays)


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

