"""The never-fold matrix (each refusal says why and leaves the graph unchanged) and dtype handling."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse
from support.fold_helpers import assert_folds, assert_refused

from foldnorm import fold_model
from foldnorm.errors import InvalidModelError


def conv_bn(rng: np.random.Generator, *, dtype: str = "float", np_dtype: type = np.float32,
            param_dtype: type | None = None, bn_attrs: str = "", extra_inputs: str = "", outputs: str = "",
            params: dict[str, np.ndarray] | None = None, opset: int = 18, w_scale: float = 0.5) -> onnx.ModelProto:
    inits = {"W": rng.normal(0, w_scale, (6, 4, 3, 3)).astype(np_dtype),
             **(params or bn_params("bn", 6, rng, param_dtype or np_dtype))}
    for name in extra_inputs.replace(" ", "").split(","):
        inits.pop(name.split("]")[-1], None)
    sep = ", " if extra_inputs else ""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g ({dtype}[N, 4, 6, 6] x{sep}{extra_inputs}) => ({dtype}[N, 6, 6, 6] y{outputs}) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = BatchNormalization {bn_attrs} (c, {bn_inputs("bn")})
    }}
    """, inits)


def test_conv_weight_as_graph_input_is_skipped(rng: np.random.Generator) -> None:
    assert_refused(conv_bn(rng, extra_inputs="float[6, 4, 3, 3] W"), "'W' of Conv c is a graph input")


def test_producer_output_that_is_a_graph_output_is_skipped(rng: np.random.Generator) -> None:
    assert_refused(conv_bn(rng, outputs=", float[N, 6, 6, 6] c"), "is also a graph output")


def test_zero_variance_with_zero_eps_is_skipped(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng)
    p["bn_var"][2] = 0.0
    assert_refused(conv_bn(rng, bn_attrs="<epsilon = 0.0>", params=p), "not finite")


def test_fp16_overflow_is_skipped(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng, np.float16)
    p["bn_scale"][1] = 60000.0
    p["bn_var"][1] = 0.0001
    assert_refused(conv_bn(rng, dtype="float16", np_dtype=np.float16, params=p), "exceeds the float16 range")


def test_fp16_underflow_is_skipped(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng, np.float16)
    p["bn_scale"][3] = 1e-7
    assert_refused(conv_bn(rng, dtype="float16", np_dtype=np.float16, params=p, w_scale=0.01),
                   "underflows float16")


def test_batchnorm7_spatial0_is_skipped(rng: np.random.Generator) -> None:
    model = conv_bn(rng, bn_attrs="<spatial = 0>", opset=7)
    assert_refused(model, "spatial=0")


def test_bn_channel_count_mismatch_is_a_user_error(rng: np.random.Generator) -> None:
    model = conv_bn(rng)  # made invalid after parsing: the checker would refuse it
    short = bn_params("bn", 5, rng)
    for t in model.graph.initializer:
        if t.name in short:
            t.CopyFrom(onnx.numpy_helper.from_array(short[t.name], t.name))
    with pytest.raises(InvalidModelError, match="fix the model"):
        fold_model(model)


def test_fp16_conv_bn_folds(rng: np.random.Generator) -> None:
    model = conv_bn(rng, dtype="float16", np_dtype=np.float16)
    result = assert_folds(model, {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float16)}, rtol=1e-2)
    assert {t.data_type for t in result.model.graph.initializer} == {onnx.TensorProto.FLOAT16}


def test_mixed_precision_bn15_emits_in_the_conv_dtype(rng: np.random.Generator) -> None:
    model = conv_bn(rng, dtype="float16", np_dtype=np.float16, param_dtype=np.float32)
    result = assert_folds(model, {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float16)}, rtol=1e-2)
    assert {t.data_type for t in result.model.graph.initializer} == {onnx.TensorProto.FLOAT16}


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
    result = fold_model(model)
    assert result.report.records[0].outcome == "folded"
    onnx.checker.check_model(result.model, full_check=True)
    before = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert {a.dtype for a in after.values()} == {np.dtype(bf16)}
    a = rng.normal(0, 1, (3, 5))
    s = before["bn_scale"] / np.sqrt(before["bn_var"] + 1e-5)
    expected = (0.5 * a @ before["B"] + 2.0 * before["C"] - before["bn_mean"]) * s + before["bn_bias"]
    (gemm,) = result.model.graph.node
    got = 0.5 * a @ after[gemm.input[1]].astype(np.float64) + after[gemm.input[2]].astype(np.float64)
    assert np.max(np.abs(got - expected)) <= 2e-2 * np.max(np.abs(expected))


def test_opset6_model_given_as_a_modelproto_is_a_user_error(rng: np.random.Generator) -> None:
    # BatchNormalization-6 defaults to is_test=0 (training): the API refuses it as a path is refused.
    model = conv_bn(rng)
    model.opset_import[0].version = 6
    with pytest.raises(InvalidModelError, match="opset 6 is not supported"):
        fold_model(model)
