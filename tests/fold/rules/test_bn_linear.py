"""bn-linear: a BatchNormalization right before a Gemm/MatMul (RepViT's and EfficientViT's BatchNorm1d -> Linear
heads), through a Flatten or not, folded into the weight's input rows and the bias; the cases that must not fold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off

from foldnorm import fold_model


def head_model(rng: np.random.Generator, *, linear: str = "Gemm <transB = 1> (n, B, C)",
               b_shape: tuple[int, ...] = (6, 4), c_shape: tuple[int, ...] = (6,), x: str = "float[N, 4] x",
               out: str = "float[N, 6] y", channels: int = 4) -> onnx.ModelProto:
    """x -> BN(channels) -> n -> `linear` (weight B, bias C) -> y."""
    inits = {"B": rng.normal(0, 0.5, b_shape).astype(np.float32), "C": rng.normal(0, 0.5, c_shape).astype(np.float32),
             **bn_params("bn", channels, rng)}
    if "C)" not in linear:
        del inits["C"]
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({x}) => ({out}) {{
        n = BatchNormalization (x, {bn_inputs("bn")})
        y = {linear}
    }}
    """, inits)


def flatten_model(rng: np.random.Generator, *, flatten: str = "Flatten (n)", x: tuple[int, ...] = (4, 3, 3),
                  linear: str = "Gemm <transB = 1> (f, B)", b_shape: tuple[int, ...] = (6, 36), out: str = "N",
                  check: bool = True) -> onnx.ModelProto:
    """x [N, *x] -> BN(x[0] channels) -> `flatten` (to f) -> `linear` (weight B, bias C [6]) -> y [out, 6]."""
    inits = {"B": rng.normal(0, 0.5, b_shape).astype(np.float32), "C": rng.normal(0, 0.5, 6).astype(np.float32),
             **bn_params("bn", x[0], rng)}
    if "C)" not in linear:
        del inits["C"]
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, {", ".join(map(str, x))}] x) => (float[{out}, 6] y) {{
        n = BatchNormalization (x, {bn_inputs("bn")})
        f = {flatten}
        y = {linear}
    }}
    """, inits, check=check)


def feed(rng: np.random.Generator, shape: tuple[int, ...] = (3, 4)) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0, 1, shape).astype(np.float32)}


@pytest.mark.parametrize(("linear", "b_shape", "c_shape"), [
    ("Gemm <transB = 1> (n, B, C)", (6, 4), (6,)),  # nn.Linear as both exporters write it
    ("Gemm <alpha = 0.7, beta = 1.3> (n, B, C)", (4, 6), (1, 6)),
    ("Gemm <transB = 1, beta = 0.0> (n, B, C)", (6, 4), (6,)),  # C is ignored: it stays ignored
    ("Gemm <alpha = 2.0> (n, B, C)", (4, 6), (3, 1)),  # a per-row C widens to [M, N]
    ("Gemm <transB = 1> (n, B)", (6, 4), (6,)),
])
def test_bn_before_gemm_folds_into_b_and_c(rng: np.random.Generator, linear: str, b_shape: tuple[int, ...],
                                           c_shape: tuple[int, ...]) -> None:
    result = assert_folds(head_model(rng, linear=linear, b_shape=b_shape, c_shape=c_shape), feed(rng))
    (gemm,) = result.model.graph.node
    assert gemm.input[0] == "x" and onnx.helper.get_attribute_value(
        next(a for a in gemm.attribute if a.name == "beta")) == 1.0


def test_bn_before_rank_2_matmul_makes_it_a_gemm_with_the_shift_as_bias(rng: np.random.Generator) -> None:
    result = assert_folds(head_model(rng, linear="MatMul (n, B)", b_shape=(4, 6)), feed(rng))
    assert [n.op_type for n in result.model.graph.node] == ["Gemm"]
    assert "now a Gemm" in result.report.records[0].reason


def test_bn_through_flatten_folds_channel_major_rows(rng: np.random.Generator) -> None:
    # BatchNorm2d over [N, 4, 3, 3], flattened: K = 36 rows, channel c covers rows 9c ... 9c + 8.
    model = flatten_model(rng, flatten="Flatten <axis = -3> (n)", linear="Gemm <transB = 1> (f, B, C)")
    result = assert_folds(model, feed(rng, (2, 4, 3, 3)))
    assert [n.op_type for n in result.model.graph.node] == ["Flatten", "Gemm"]


def test_bn_through_flatten_into_a_matmul(rng: np.random.Generator) -> None:
    model = flatten_model(rng, x=(4, 1, 1), linear="MatMul (f, B)", b_shape=(4, 6))
    assert_folds(model, feed(rng, (2, 4, 1, 1)))


def pooled_model(rng: np.random.Generator, linear: str, b_shape: tuple[int, int], check: bool = True
                 ) -> onnx.ModelProto:
    """x [N, 4, 5, 3] -> BN -> GlobalAveragePool -> Flatten -> `linear` (weight B, bias C [6]) -> y [N, 6]."""
    inits = {"B": rng.normal(0, 0.5, b_shape).astype(np.float32), "C": rng.normal(0, 0.5, 6).astype(np.float32),
             **bn_params("bn", 4, rng)}
    if "C)" not in linear:
        del inits["C"]
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 5, 3] x) => (float[N, 6] y) {{
        n = BatchNormalization (x, {bn_inputs("bn")})
        p = GlobalAveragePool (n)
        f = Flatten (p)
        y = {linear}
    }}
    """, inits, check=check)


@pytest.mark.parametrize(("linear", "b_shape"), [("Gemm <transB = 1> (f, B, C)", (6, 4)), ("MatMul (f, B)", (4, 6))])
def test_bn_through_global_average_pool_and_flatten(rng: np.random.Generator, linear: str,
                                                    b_shape: tuple[int, int]) -> None:
    # StarNet's head: BN -> GlobalAveragePool -> Flatten -> Linear; the pool averages each channel: K = C.
    result = assert_folds(pooled_model(rng, linear, b_shape), feed(rng, (2, 4, 5, 3)))
    assert [n.op_type for n in result.model.graph.node] == ["GlobalAveragePool", "Flatten", "Gemm"]
    assert result.model.graph.node[0].input[0] == "x"


def test_a_pooled_bn_whose_layer_takes_more_rows_than_channels_is_refused(rng: np.random.Generator) -> None:
    # (an invalid model, which shape inference refuses: the fold must not make it another one)
    model = pooled_model(rng, "Gemm <transB = 1> (f, B)", (6, 8), check=False)
    (record,) = fold_model(model).report.records
    assert record.outcome == "skipped"
    assert "the layer after Flatten f has 8 inputs, not the BN's 4 pooled channels" in record.reason


def test_transposed_input_is_refused(rng: np.random.Generator) -> None:
    model = head_model(rng, linear="Gemm <transA = 1> (n, B, C)", b_shape=(3, 6), out="float[4, 6] y",
                       x="float[3, 4] x")
    assert_refused(model, "transposes its input (transA=1)")


def test_bn_read_as_the_weight_is_refused(rng: np.random.Generator) -> None:
    inits = {"A": rng.normal(0, 0.5, (6, 3)).astype(np.float32), **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[3, 4] x) => (float[6, 4] y) {{
        n = BatchNormalization (x, {bn_inputs("bn")})
        y = MatMul (A, n)
    }}
    """, inits)
    assert_refused(model, "MatMul y reads it as something other than its data input")


def test_matmul_of_a_rank_3_input_is_refused(rng: np.random.Generator) -> None:
    # BN over axis 1 (5 channels) of [N, 5, 4]; the MatMul contracts axis 2.
    model = head_model(rng, linear="MatMul (n, B)", b_shape=(4, 6), x="float[N, 5, 4] x", channels=5,
                       out="float[N, 5, 6] y")
    assert_refused(model, "the input of MatMul y is not provably rank 2")


def test_a_weight_that_is_a_graph_input_is_refused(rng: np.random.Generator) -> None:
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4] x, float[6, 4] B) => (float[N, 6] y) {{
        n = BatchNormalization (x, {bn_inputs("bn")})
        y = Gemm <transB = 1> (n, B)
    }}
    """, bn_params("bn", 4, rng))
    assert_refused(model, "the weight 'B' of Gemm y is a graph input, not a constant")


def test_flatten_from_another_axis_is_refused(rng: np.random.Generator) -> None:
    model = flatten_model(rng, flatten="Flatten <axis = 2> (n)", b_shape=(6, 9), out="M")
    assert_refused(model, "Flatten f flattens from axis 2, not from the BN's channel axis 1")


def test_rows_that_are_no_whole_number_of_channels_are_refused(rng: np.random.Generator) -> None:
    # An invalid model (the Gemm's K does not match the flattened input): refused, never folded wrongly.
    model = flatten_model(rng, b_shape=(6, 30), check=False)
    result = fold_model(model)  # not assert_refused: the full checker rejects this model before and after
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
    (record,) = result.report.records
    assert record.outcome == "skipped"
    assert record.reason == "the 30 inputs of the layer after Flatten f are no whole number of the BN's 4 channels"


def test_skip_bn_linear_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(head_model(rng), "bn-linear")
