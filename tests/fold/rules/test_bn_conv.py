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


@pytest.mark.parametrize(("reader", "t"), [("t = CastLike (half, h)", "float t"), ("t = Shape (h)", "int64[4] t"),
                                           ("t = Size (h)", "int64 t")])
def test_readers_of_the_bns_type_or_shape_follow_its_input(rng: np.random.Generator, reader: str, t: str) -> None:
    # CoAtNet's dynamo export: the BN before a 1x1 Conv is also read by a CastLike that takes only its type.
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 8, 2, 2] y, {t}) {{
        h = BatchNormalization (x, {bn_inputs("bn")})
        y = Conv <strides = [2, 2]> (h, W)
        {reader}
    }}
    """, {"W": rng.normal(0, 0.5, (8, 4, 3, 3)).astype(np.float32), "half": np.array(0.5, np.float64),
          **bn_params("bn", 4, rng)})
    result = assert_folds(model, x_feed(rng))
    assert [n.op_type for n in result.model.graph.node] == ["Conv", reader.split()[2]]
    assert result.model.graph.node[1].input[-1 if "CastLike" in reader else 0] == "x"


def test_a_bn_whose_values_another_node_reads_is_not_folded_into_the_conv(rng: np.random.Generator) -> None:
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 8, 2, 2] y, float[N, 4, 6, 6] t) {{
        h = BatchNormalization (x, {bn_inputs("bn")})
        y = Conv <strides = [2, 2]> (h, W)
        t = CastLike (h, x)
    }}
    """, {"W": rng.normal(0, 0.5, (8, 4, 3, 3)).astype(np.float32), **bn_params("bn", 4, rng)})
    assert_refused(model, "nothing after it takes a fold", outcome="kept")


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
