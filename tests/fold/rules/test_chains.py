"""Chains: BN → BN, per-channel Mul/Add/Sub/Div tails, BN before a Conv, standalone BN lowering."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import assert_close, bn_inputs, bn_params, parse, run_ort
from support.fold_helpers import assert_folds, assert_refused

from foldnorm import FoldOptions, fold_model


def x_feed(rng: np.random.Generator, c: int = 4, hw: int = 6) -> dict[str, np.ndarray]:
    return {"x": rng.normal(0, 1, (2, c, hw, hw)).astype(np.float32)}


def test_conv_bn_bn_folds_both(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32), **bn_params("a", 6, rng),
             **bn_params("b", 6, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        h = BatchNormalization (c, {bn_inputs("a")})
        y = BatchNormalization <epsilon = 0.1> (h, {bn_inputs("b")})
    }}
    """, inits)
    result = assert_folds(model, x_feed(rng), folded=2)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_standalone_bn_bn_merges(rng: np.random.Generator) -> None:
    inits = {**bn_params("a", 4, rng), **bn_params("b", 4, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {{
        h = BatchNormalization <epsilon = 0.2> (x, {bn_inputs("a")})
        y = BatchNormalization (h, {bn_inputs("b")})
    }}
    """, inits)
    result = fold_model(model)
    outcomes = [(r.node, r.outcome) for r in result.report.records]
    assert outcomes == [("h", "kept"), ("y", "folded")]
    assert "merged" in result.report.records[1].reason
    x = x_feed(rng)
    assert_close(run_ort(model, x), run_ort(result.model, x))
    onnx.checker.check_model(result.model, full_check=True)


def test_affine_tail_after_conv_folds(rng: np.random.Generator) -> None:
    c = 4
    inits = {"W": rng.normal(0, 0.5, (c, 4, 3, 3)).astype(np.float32),
             "m": rng.uniform(0.5, 2, (c, 1, 1)).astype(np.float32),
             "a": rng.normal(0, 1, (1, c, 1, 1)).astype(np.float32),
             "s": rng.normal(0, 1, (c, 1, 1)).astype(np.float32),
             "d": rng.uniform(0.5, 2, (1, c, 1, 1)).astype(np.float32),
             "k": np.array(1.7, np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        h1 = Mul (m, c)
        h2 = Add (h1, a)
        h3 = Sub (s, h2)
        h4 = Div (h3, d)
        y = Mul (h4, k)
    }
    """, inits)
    result = assert_folds(model, x_feed(rng), kind="affine", gone="", folded=5)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_constant_on_another_axis_with_channel_length_is_not_folded(rng: np.random.Generator) -> None:
    # 6 channels and width 6: a [6] constant broadcasts along the width, not the channels.
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32),
             "m": rng.uniform(0.5, 2, 6).astype(np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = Mul (c, m)
    }
    """, inits)
    result = assert_refused(model, "acts on axis 3 of 4, not on the producer's output-channel axis 1")
    assert result.report.records[0].kind == "affine"


@pytest.mark.parametrize(("shape", "out", "reason"), [
    ((6, 1, 6), "float[N, 6, 6, 6]", "varies along several axes"),
    ((1, 1, 6, 1, 1), "float[1, N, 6, 6, 6]", "more than the tensor's rank"),
])
def test_constant_that_is_not_per_channel_is_not_folded(rng: np.random.Generator, shape: tuple[int, ...], out: str,
                                                        reason: str) -> None:
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32),
             "m": rng.uniform(0.5, 2, shape).astype(np.float32)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => ({out} y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = Add (c, m)
    }}
    """, inits)
    assert_refused(model, reason)


def test_division_by_a_variable_is_left_alone(rng: np.random.Generator) -> None:
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32),
             "m": rng.uniform(0.5, 2, (6, 1, 1)).astype(np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = Div (m, c)
    }
    """, inits)
    result = fold_model(model)
    assert result.report.records == []
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()


@pytest.mark.parametrize(("group", "bias"), [(1, True), (2, False), (4, True)])
def test_bn_before_unpadded_conv_folds(rng: np.random.Generator, group: int, bias: bool) -> None:
    inits = {"W": rng.normal(0, 0.5, (8, 4 // group, 3, 3)).astype(np.float32), **bn_params("bn", 4, rng)}
    args = "h, W"
    if bias:
        inits["B"] = rng.normal(0, 0.5, 8).astype(np.float32)
        args += ", B"
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 8, 2, 2] y) {{
        h = BatchNormalization (x, {bn_inputs("bn")})
        y = Conv <group = {group}, strides = [2, 2]> ({args})
    }}
    """, inits)
    result = assert_folds(model, x_feed(rng))
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


def standalone_model(rng: np.random.Generator, x_type: str = "float", dtype: type = np.float32) -> onnx.ModelProto:
    inits = bn_params("bn", 4, rng, dtype)
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({x_type}[N, 4, 6, 6] x) => ({x_type}[N, 4, 6, 6] y) {{
        r = Relu (x)
        y = BatchNormalization (r, {bn_inputs("bn")})
    }}
    """, inits)


def test_standalone_bn_is_kept_by_default(rng: np.random.Generator) -> None:
    assert_refused(standalone_model(rng), "standalone", outcome="kept")


def test_standalone_bn_lowers_to_mul_add(rng: np.random.Generator) -> None:
    result = assert_folds(standalone_model(rng), x_feed(rng), options=FoldOptions(standalone_bn="affine"))
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Mul", "Add"]
    assert "lowered to Mul + Add" in result.report.records[0].reason


def test_standalone_mixed_precision_bn_lowers_in_input_dtype(rng: np.random.Generator) -> None:
    model = standalone_model(rng, "float16", np.float32)  # BN-15: fp16 X, fp32 parameters
    feeds = {"x": rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float16)}
    result = assert_folds(model, feeds, rtol=5e-3, options=FoldOptions(standalone_bn="affine"))
    new = [t for t in result.model.graph.initializer if "affine" in t.name]
    assert {t.data_type for t in new} == {onnx.TensorProto.FLOAT16}


def test_attention_scale_after_dynamic_matmul_is_not_reported(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 4] q, float[N, 4, 3] k) => (float[N, 3, 3] y) {
        s = MatMul (q, k)
        d = Constant <value = float {2.0}> ()
        y = Div (s, d)
    }
    """)
    result = fold_model(model)
    assert result.report.records == []
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()


def test_constant_op_on_a_shared_linear_output_is_not_reported(rng: np.random.Generator) -> None:
    # GELU written out: Linear output x feeds both x * 0.5 and erf(x / sqrt(2)); neither is an affine tail.
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "b": rng.normal(0, 0.5, 4).astype(np.float32),
             "half": np.array(0.5, np.float32), "root2": np.array(1.4142135, np.float32),
             "one": np.array(1.0, np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 4] y) {
        m = MatMul (x, W)
        h = Add (m, b)
        d = Div (h, root2)
        e = Erf (d)
        p = Add (e, one)
        q = Mul (h, half)
        y = Mul (q, p)
    }
    """, inits)
    result = fold_model(model)
    assert result.report.records == []
    assert result.model.graph.SerializeToString() == model.graph.SerializeToString()
