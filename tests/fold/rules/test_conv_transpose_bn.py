"""conv-transpose-bn: BatchNormalization after ConvTranspose (rank 1-3, any groups, out != in channels, bias)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_turned_off


def dims(prefix: str, rank: int) -> str:
    return ", ".join(f"{prefix}{k}" for k in range(rank))


def convt_bn_model(rng: np.random.Generator, rank: int, group: int, cin: int, cout: int, bias: bool,
                   stride: int = 2) -> onnx.ModelProto:
    kernel = [3] * rank
    inits = {"W": rng.normal(0, 0.5, (cin, cout // group, *kernel)).astype(np.float32),
             **bn_params("bn", cout, rng)}
    args = "x, W"
    if bias:
        inits["B"] = rng.normal(0, 0.5, cout).astype(np.float32)
        args += ", B"
    pads = [1] * (2 * rank)
    text = f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, {cin}, {dims("s", rank)}] x) => (float[N, {cout}, {dims("o", rank)}] y) {{
        c = ConvTranspose <group = {group}, strides = {[stride] * rank}, pads = {pads},
                           output_padding = {[1] * rank}> ({args})
        y = BatchNormalization <epsilon = 0.01> (c, {bn_inputs("bn")})
    }}
    """
    return parse(text, inits)


@pytest.mark.parametrize(("rank", "group", "cin", "cout", "bias"), [
    (1, 1, 3, 5, True), (2, 1, 4, 6, False), (2, 2, 4, 6, True), (2, 4, 8, 4, False), (3, 3, 6, 9, True),
])
def test_convtranspose_bn_folds(rng: np.random.Generator, rank: int, group: int, cin: int, cout: int,
                                bias: bool) -> None:
    model = convt_bn_model(rng, rank, group, cin, cout, bias)
    x = {"x": rng.normal(0, 1, (2, cin, *([5] * rank))).astype(np.float32)}
    result = assert_folds(model, x)
    assert result.report.records[0].target is not None




def test_skip_conv_transpose_bn_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(convt_bn_model(rng, 2, 2, 4, 6, True), "conv-transpose-bn")
