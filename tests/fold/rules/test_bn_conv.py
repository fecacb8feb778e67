"""bn-conv: a BatchNormalization right before a Conv, folded into its input channels when the Conv pads nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse, x_feed
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off


def bn_conv_model(rng: np.random.Generator, group: int = 1, bias: bool = False) -> onnx.ModelProto:
    inits = {"W": rng.normal(0, 0.5, (8, 4 // group, 3, 3)).astype(np.float32), **bn_params("bn", 4, rng)}
    args = "h, W"
    if bias:
        inits["B"] = rng.normal(0, 0.5, 8).astype(np.float32)
        args += ", B"
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 8, 2, 2] y) {{
        h = BatchNormalization (x, {bn_inputs("bn")})
        y = Conv <group = {group}, strides = [2, 2]> ({args})
    }}
    """, inits)


@pytest.mark.parametrize(("group", "bias"), [(1, True), (2, False), (4, True)])
def test_bn_before_unpadded_conv_folds(rng: np.random.Generator, group: int, bias: bool) -> None:
    result = assert_folds(bn_conv_model(rng, group, bias), x_feed(rng))
    assert result.report.records[0].target == "y"


@pytest.mark.parametrize("padding", ["pads = [1, 1, 1, 1]", 'auto_pad = "SAME_UPPER"'])
def test_bn_before_padded_conv_is_skipped(rng: np.random.Generator, padding: str) -> None:
    inits = {"W": rng.normal(0, 0.5, (8, 4, 3, 3)).astype(np.float32), **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 8, 6, 6] y) {{
        h = BatchNormalization (x, {bn_inputs("bn")})
        y = Conv <{padding}> (h, W)
    }}
    """, inits)
    assert_refused(model, "pads its input")


def test_skip_bn_conv_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(bn_conv_model(rng), "bn-conv")
