"""BatchNorm after ConvTranspose, Gemm and MatMul (+ bias Add): folds and the cases that must not fold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_refused


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


def gemm_bn_model(rng: np.random.Generator, *, trans_a: int, trans_b: int, alpha: float, beta: float,
                  c_shape: tuple[int, ...] | None, m: int = 3, k: int = 5, n: int = 4) -> onnx.ModelProto:
    inits = {"B": rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32),
             **bn_params("bn", n, rng)}
    args = "a, B"
    if c_shape is not None:
        inits["C"] = rng.normal(0, 0.5, c_shape).astype(np.float32)
        args += ", C"
    a_shape = f"{k}, {m}" if trans_a else f"{m}, {k}"
    text = f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[{a_shape}] a) => (float[{m}, {n}] y) {{
        c = Gemm <transA = {trans_a}, transB = {trans_b}, alpha = {alpha}, beta = {beta}> ({args})
        y = BatchNormalization <epsilon = 0.001> (c, {bn_inputs("bn")})
    }}
    """
    return parse(text, inits)


@pytest.mark.parametrize(("trans_a", "trans_b", "alpha", "beta", "c_shape"), [
    (0, 0, 1.0, 1.0, None), (0, 1, 0.5, 2.0, ()), (1, 0, 1.5, 0.7, (4,)), (1, 1, 2.0, -1.0, (1, 4)),
    (0, 1, 1.0, 0.5, (3, 4)), (0, 0, 0.8, 0.0, (4,)), (1, 0, 1.0, 1.5, (3, 1)),
])
def test_gemm_bn_folds(rng: np.random.Generator, trans_a: int, trans_b: int, alpha: float, beta: float,
                       c_shape: tuple[int, ...] | None) -> None:
    model = gemm_bn_model(rng, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, c_shape=c_shape)
    a = {"a": rng.normal(0, 1, (5, 3) if trans_a else (3, 5)).astype(np.float32)}
    assert_folds(model, a)


@pytest.mark.parametrize("bias", [False, True])
def test_matmul_rank2_bn_folds(rng: np.random.Generator, bias: bool) -> None:
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "b": rng.normal(0, 0.5, 4).astype(np.float32),
             **bn_params("bn", 4, rng)}
    add = "h = Add (m, b)" if bias else "h = Identity (m)"
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 4] y) {{
        m = MatMul (x, W)
        {add}
        y = BatchNormalization (h, {bn_inputs("bn")})
    }}
    """, inits if bias else {k: v for k, v in inits.items() if k != "b"})
    x = {"x": rng.normal(0, 1, (3, 5)).astype(np.float32)}
    if bias:
        result = assert_folds(model, x)
        assert sum(n.op_type == "Add" for n in result.model.graph.node) == 1
    else:
        result = assert_refused(model, "Identity", outcome="kept")


def test_matmul_rank2_without_bias_gets_one_add(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 4] y) {{
        m = MatMul (x, W)
        y = BatchNormalization (m, {bn_inputs("bn")})
    }}
    """, inits)
    result = assert_folds(model, {"x": rng.normal(0, 1, (3, 5)).astype(np.float32)})
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "Add"]


def test_rank3_matmul_bn_over_axis1_is_not_folded(rng: np.random.Generator) -> None:
    # [N, 4, 5] @ [5, 4] -> [N, 4, 4]: BN normalizes axis 1, the MatMul's columns are axis 2.
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 5] x) => (float[N, 4, 4] y) {{
        m = MatMul (x, W)
        y = BatchNormalization (m, {bn_inputs("bn")})
    }}
    """, inits)
    assert_refused(model, "not on the producer's output-channel axis")


def test_matmul_of_unknown_rank_is_not_folded(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x, int64[K] shape) => (float[N, 4] y) {{
        r = Reshape (x, shape)
        m = MatMul (r, W)
        y = BatchNormalization (m, {bn_inputs("bn")})
    }}
    """, inits)
    assert_refused(model, "cannot be proved")


def test_rank3_matmul_with_per_column_mul_folds(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "b": rng.normal(0, 0.5, 4).astype(np.float32),
             "s": rng.uniform(0.5, 2, 4).astype(np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 5] x) => (float[N, 3, 4] y) {
        m = MatMul (x, W)
        h = Add (m, b)
        y = Mul (h, s)
    }
    """, inits)
    assert_folds(model, {"x": rng.normal(0, 1, (2, 3, 5)).astype(np.float32)}, kind="affine", gone="Mul")


def test_matmul_rank_proved_by_shape_inference(rng: np.random.Generator) -> None:
    # No value_info for the ReduceMean output (the legacy exporter often records none): inference proves rank 2.
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "axes": np.array([1], np.int64),
             **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 5] x) => (float[N, 4] y) {{
        r = ReduceMean <keepdims = 0> (x, axes)
        m = MatMul (r, W)
        y = BatchNormalization (m, {bn_inputs("bn")})
    }}
    """, inits)
    assert_folds(model, {"x": rng.normal(0, 1, (2, 3, 5)).astype(np.float32)})


def test_bias_that_widens_a_one_column_matmul_is_skipped_not_an_error(rng: np.random.Generator) -> None:
    # [N, 8] @ [8, 1] + [4] -> [N, 4]: a valid model whose BN has 4 channels, but the MatMul has 1 column.
    inits = {"W": rng.normal(0, 0.5, (8, 1)).astype(np.float32), "k": rng.normal(0, 1, 4).astype(np.float32),
             **bn_params("bn", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 8] x) => (float[N, 4] y) {{
        m = MatMul (x, W)
        a = Add (m, k)
        y = BatchNormalization (a, {bn_inputs("bn")})
    }}
    """, inits)
    assert_refused(model, "widens the 1 output column(s) of MatMul m to 4")
