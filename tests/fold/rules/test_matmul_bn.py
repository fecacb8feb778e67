"""matmul-bn: BatchNormalization (or a per-column affine) after MatMul (+ bias Add) whose output is provably
rank 2 (or, for a last-axis constant, any rank); the cases that must not fold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off


def matmul_bias_bn_model(rng: np.random.Generator, bias: bool = True) -> onnx.ModelProto:
    """MatMul -> Add of a constant bias (an Identity when not `bias`) -> BN, on a rank-2 input."""
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "b": rng.normal(0, 0.5, 4).astype(np.float32),
             **bn_params("bn", 4, rng)}
    add = "h = Add (m, b)" if bias else "h = Identity (m)"
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 4] y) {{
        m = MatMul (x, W)
        {add}
        y = BatchNormalization (h, {bn_inputs("bn")})
    }}
    """, inits if bias else {k: v for k, v in inits.items() if k != "b"})


@pytest.mark.parametrize("bias", [False, True])
def test_matmul_rank2_bn_folds(rng: np.random.Generator, bias: bool) -> None:
    model = matmul_bias_bn_model(rng, bias)
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


def test_skip_matmul_bn_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(matmul_bias_bn_model(rng), "matmul-bn")
