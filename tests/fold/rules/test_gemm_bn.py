"""gemm-bn: BatchNormalization after Gemm (any transA/transB/alpha/beta, every C shape; fp32, fp64, bf16)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_turned_off, checked_fold


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


def gemm_bn(rng: np.random.Generator, dtype: str, np_dtype: type) -> onnx.ModelProto:
    inits = {"B": rng.normal(0, 0.5, (5, 4)).astype(np_dtype), "C": rng.normal(0, 0.5, 4).astype(np_dtype),
             **bn_params("bn", 4, rng, np_dtype)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({dtype}[3, 5] a) => ({dtype}[3, 4] y) {{
        c = Gemm <alpha = 0.5, beta = 2.0> (a, B, C)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)


def test_fp64_gemm_bn_folds_in_float64(rng: np.random.Generator) -> None:
    result = assert_folds(gemm_bn(rng, "double", np.float64), {"a": rng.normal(0, 1, (3, 5))}, rtol=1e-12)
    assert {t.data_type for t in result.model.graph.initializer} == {onnx.TensorProto.DOUBLE}


def test_bf16_gemm_bn_folds(rng: np.random.Generator) -> None:
    # ONNX Runtime has no bf16 kernels on CPU: check against float64 maths on the stored values.
    bf16 = ml_dtypes.bfloat16
    model = gemm_bn(rng, "bfloat16", bf16)
    result = checked_fold(model)
    assert result.report.records[0].outcome == "folded"
    before = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert {a.dtype for a in after.values()} == {np.dtype(bf16)}
    a = rng.normal(0, 1, (3, 5))
    s = before["bn_scale"] / np.sqrt(before["bn_var"] + 1e-5)
    expected = (0.5 * a @ before["B"] + 2.0 * before["C"] - before["bn_mean"]) * s + before["bn_bias"]
    (gemm,) = result.model.graph.node
    got = 0.5 * a @ after[gemm.input[1]].astype(np.float64) + after[gemm.input[2]].astype(np.float64)
    assert np.max(np.abs(got - expected)) <= 2e-2 * np.max(np.abs(expected))


def test_skip_gemm_bn_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    model = gemm_bn_model(rng, trans_a=0, trans_b=1, alpha=0.5, beta=2.0, c_shape=(4,))
    assert_turned_off(model, "gemm-bn")
