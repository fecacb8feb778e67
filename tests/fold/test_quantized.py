"""Folding into quantized (QDQ) weights: the integers stay, the scales take |BN scale|, negative channels are
negated; what cannot stay exact is refused, or requantized under `requantize`. Every model runs on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support.builders import assert_close, bn_inputs, bn_params, parse, run_ort, x_feed
from support.fold_helpers import assert_refused, checked_fold
from support.qdq_builders import qdq_conv_bn, quantize_weight

from foldnorm import FoldOptions, compare_models
from foldnorm.fold.quantized import Dequantized, fold_weights


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def weight_dq(model: onnx.ModelProto) -> onnx.NodeProto:
    """The DequantizeLinear feeding the Conv's weight."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return next(n for n in model.graph.node if n.output[0] == conv.input[1])


def dq_arrays(model: onnx.ModelProto) -> list[np.ndarray]:
    """The constant inputs (integers, scale, zero point) of the Conv's weight DequantizeLinear."""
    return [initializer(model, name) for name in weight_dq(model).input]


def exact_fold(model: onnx.ModelProto, feeds: dict[str, np.ndarray], label: str = "exact") -> onnx.ModelProto:
    """Fold: the BN goes, the record says `label`, and the outputs equal the unfolded model's (float rounding)."""
    result = checked_fold(model)
    (record,) = result.report.records
    assert (record.outcome, record.quantization) == ("folded", label), result.report.to_json()
    assert all(n.op_type != "BatchNormalization" for n in result.model.graph.node)
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds), rtol=1e-5)
    return result.model


@pytest.mark.parametrize("qat", [False, True])
def test_per_channel_int8_weights_keep_their_integers(rng: np.random.Generator, qat: bool) -> None:
    params = bn_params("bn", 6, rng)
    params["bn_scale"][:3] = np.abs(params["bn_scale"][:3])  # channels 0-2 positive, 3-5 negative
    params["bn_scale"][3:] = -np.abs(params["bn_scale"][3:])
    model = qdq_conv_bn(rng, pair=False, io_pairs=False, qat=qat, params=params)
    folded = exact_fold(model, x_feed(rng, hw=8))
    dq = weight_dq(folded)
    if qat:  # the QAT form stays: QuantizeLinear of a float weight whose negative channels were negated
        q_node = next(n for n in folded.graph.node if n.output[0] == dq.input[0])
        assert q_node.op_type == "QuantizeLinear"
        np.testing.assert_array_equal(np.sign(initializer(folded, q_node.input[0])[3:]),
                                      -np.sign(initializer(model, "Wf")[3:]))
        return
    q, scale, zero = dq_arrays(folded)
    q0, scale0, _ = dq_arrays(model)
    np.testing.assert_array_equal(q[:3], q0[:3])
    np.testing.assert_array_equal(q[3:], -q0[3:])
    s = params["bn_scale"] / np.sqrt(params["bn_var"] + 1e-5)
    np.testing.assert_allclose(scale, scale0 * np.abs(s), rtol=1e-6)
    assert np.all(zero == 0) and dq.attribute[0].i == 0


def test_per_tensor_scale_becomes_per_channel(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng, pair=False, io_pairs=False, per_channel=False, opset=13)
    folded = exact_fold(model, x_feed(rng, hw=8))
    _, scale, zero = dq_arrays(folded)
    assert scale.shape == (6,) and zero.shape == (6,)
    assert [(a.name, a.i) for a in weight_dq(folded).attribute] == [("axis", 0)]


def test_per_tensor_scale_before_opset_13_is_refused_then_requantized(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng, pair=False, io_pairs=False, per_channel=False, opset=10)
    assert_refused(model, "needs a per-channel scale: DequantizeLinear-13 or later")
    result = checked_fold(model, FoldOptions(requantize=True))
    (record,) = result.report.records
    assert record.quantization == "requantized" and "per tensor" in record.reason
    feeds = x_feed(rng, hw=8)
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds), rtol=0.02)  # one int8 step of 127


def test_uint8_weights_with_a_zero_point_negate_around_it(rng: np.random.Generator) -> None:
    params = bn_params("bn", 6, rng)
    params["bn_scale"] = -np.abs(params["bn_scale"])
    model = qdq_conv_bn(rng, pair=False, io_pairs=False, weight="uint8", zero=128, params=params)
    folded = exact_fold(model, x_feed(rng, hw=8))
    q, _, zero = dq_arrays(folded)
    np.testing.assert_array_equal(q.astype(int), 256 - dq_arrays(model)[0].astype(int))
    assert np.all(zero == 128)


def test_minus_128_has_no_negation(rng: np.random.Generator) -> None:
    params = bn_params("bn", 6, rng)
    params["bn_scale"][2] = -abs(params["bn_scale"][2])
    model = qdq_conv_bn(rng, pair=False, io_pairs=False, params=params)
    q = model.graph.initializer[[t.name for t in model.graph.initializer].index("Wq")]
    values = numpy_helper.to_array(q).copy()
    values[2, 0, 0, 0] = -128  # a full-range quantizer (PyTorch's default) uses -128
    q.CopyFrom(numpy_helper.from_array(values, "Wq"))
    assert_refused(model, "channel 2 holds -128 (zero point 0), whose negation is outside int8")
    result = checked_fold(model, FoldOptions(requantize=True))
    assert result.report.records[0].quantization == "requantized"
    assert int(dq_arrays(result.model)[0].min()) >= -127, "requantized onto the restricted range"


def test_zero_bn_scale_is_refused(rng: np.random.Generator) -> None:
    params = bn_params("bn", 6, rng)
    params["bn_scale"][4] = 0.0
    assert_refused(qdq_conv_bn(rng, pair=False, io_pairs=False, params=params), "gives a quantization scale of 0")


def test_int32_bias_moves_to_the_new_grid(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng, pair=False, bias="int32")
    result = checked_fold(model)
    (record,) = result.report.records
    assert record.quantization == "bias-rounded" and "int32 bias was rounded onto its grid" in record.reason
    folded = result.model
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    bias_dq = next(n for n in folded.graph.node if n.output[0] == conv.input[2])
    values, grid, _ = (initializer(folded, name) for name in bias_dq.input)
    assert values.dtype == np.int32
    np.testing.assert_array_equal(grid, np.float32(0.03) * dq_arrays(folded)[1])  # x_scale * the new w_scale
    assert compare_models(model, folded).ok


def two_convs(rng: np.random.Generator, second: str) -> onnx.ModelProto:
    """`xd -> Conv(DQ(W1)) -> BN -> y` beside a second Conv on `xd`: `Conv(xd, DQ(W2), DQ(int32))` or, with
    `second="shared"`, `Conv(xd, DQ(W1))` reading the first one's dequantized weight."""
    q1, s1, z1 = quantize_weight(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32))
    q2, s2, z2 = quantize_weight(rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32))
    grid = (np.float32(0.03) * s2).astype(np.float32)
    other = """w2 = DequantizeLinear <axis = 0> (W2, s2, z2)
        b2 = DequantizeLinear <axis = 0> (B2, g2, bz)
        y2 = Conv <pads = [1, 1, 1, 1]> (xd, w2, b2)"""
    if second == "shared":
        other = "y2 = Conv <pads = [1, 1, 1, 1]> (xd, w1)"
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 8, 8] x) => (float[N, 6, 8, 8] y, float[N, 6, 8, 8] y2) {{
        xq = QuantizeLinear (x, xs, xz)
        xd = DequantizeLinear (xq, xs, xz)
        w1 = DequantizeLinear <axis = 0> (W1, s1, z1)
        c = Conv <pads = [1, 1, 1, 1]> (xd, w1)
        y = BatchNormalization (c, {bn_inputs("bn")})
        {other}
    }}
    """, {"W1": q1, "s1": s1, "z1": z1, "W2": q2, "s2": s2, "z2": z2, "B2": rng.integers(-500, 500, 6).astype(np.int32),
          "g2": grid, "bz": np.zeros(6, np.int32), "xs": np.array(0.03, np.float32), "xz": np.array(0, np.int8),
          **bn_params("bn", 6, rng)})


def test_a_new_bias_is_int32_when_the_models_biases_are(rng: np.random.Generator) -> None:
    model = two_convs(rng, "int32 bias")
    result = checked_fold(model)
    assert result.report.records[0].quantization == "bias-rounded"
    conv = next(n for n in result.model.graph.node if n.op_type == "Conv")
    assert next(n for n in result.model.graph.node if n.output[0] == conv.input[2]).op_type == "DequantizeLinear"
    assert compare_models(model, result.model).ok


def test_a_new_bias_is_float_when_the_model_has_no_int32_bias(rng: np.random.Generator) -> None:
    folded = exact_fold(qdq_conv_bn(rng, pair=False, io_pairs=False), x_feed(rng, hw=8))
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert initializer(folded, conv.input[2]).dtype == np.float32


def test_a_dequantized_weight_another_conv_reads_is_copied(rng: np.random.Generator) -> None:
    model = two_convs(rng, "shared")
    result = checked_fold(model)
    (record,) = result.report.records
    assert record.outcome == "folded" and "is shared with other nodes: folded into a copy" in record.reason
    feeds = x_feed(rng, hw=8)
    expected, got = run_ort(model, feeds), run_ort(result.model, feeds)
    np.testing.assert_array_equal(expected[1], got[1])  # the other Conv still reads the original weight
    assert_close(expected[:1], got[:1])


def test_float_bias_stays_float(rng: np.random.Generator) -> None:
    exact_fold(qdq_conv_bn(rng, pair=False, io_pairs=False, bias="float"), x_feed(rng, hw=8))


def test_bn_before_a_conv_with_quantized_weights_is_refused(rng: np.random.Generator) -> None:
    q, ws, wz = quantize_weight(rng.normal(0, 0.5, (8, 4, 1, 1)).astype(np.float32))
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 8, 6, 6] y) {{
        h = BatchNormalization (x, {bn_inputs("bn")})
        wd = DequantizeLinear <axis = 0> (Wq, ws, wz)
        y = Conv (h, wd)
    }}
    """, {"Wq": q, "ws": ws, "wz": wz, **bn_params("bn", 4, rng)})
    assert_refused(model, "more than a per-output-channel scale")
    result = checked_fold(model, FoldOptions(requantize=True))
    assert result.report.records[0].quantization == "requantized"
    feeds = x_feed(rng, hw=6)
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds), rtol=0.02)


def test_conv_transpose_weights_quantized_along_their_output_axis(rng: np.random.Generator) -> None:
    q, ws, wz = quantize_weight(rng.normal(0, 0.5, (4, 6, 3, 3)).astype(np.float32), axis=1)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 5, 5] x) => (float[N, 6, 7, 7] y) {{
        wd = DequantizeLinear <axis = 1> (Wq, ws, wz)
        c = ConvTranspose (x, wd)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, {"Wq": q, "ws": ws, "wz": wz, **bn_params("bn", 6, rng)})
    exact_fold(model, x_feed(rng, hw=5))


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_gemm_and_matmul_weights(rng: np.random.Generator, op: str) -> None:
    w = rng.normal(0, 0.5, (5, 6)).astype(np.float32)  # [K, N]: output channels on axis 1
    q, ws, wz = quantize_weight(w, axis=1)
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 6] y) {{
        wd = DequantizeLinear <axis = 1> (Wq, ws, wz)
        c = {op} (x, wd)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, {"Wq": q, "ws": ws, "wz": wz, **bn_params("bn", 6, rng)})
    exact_fold(model, {"x": rng.normal(0, 1, (3, 5)).astype(np.float32)})


def test_fold_weights_keeps_a_uniform_factor_per_tensor() -> None:
    q, scale, zero = quantize_weight(np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4), axis=None)
    dq = Dequantized(onnx.NodeProto(), q, scale, zero, None)
    new, problem = fold_weights(dq, np.full(2, -0.5), 0, per_axis=False, requantize=False)
    assert problem is None and new is not None
    assert new.axis is None and new.scale.shape == () and new.negated == 1
    np.testing.assert_array_equal(new.values, -q)
    np.testing.assert_allclose((new.values.astype(float) - new.zero_point) * new.scale, dq.dequantized() * -0.5)


def test_branches_with_quantized_weights_are_not_merged(rng: np.random.Generator) -> None:
    q3, s3, z3 = quantize_weight(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32))
    q1, s1, z1 = quantize_weight(rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32))
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {{
        w3 = DequantizeLinear <axis = 0> (W3, s3, z3)
        w1 = DequantizeLinear <axis = 0> (W1, s1, z1)
        c3 = Conv <pads = [1, 1, 1, 1]> (x, w3)
        c1 = Conv (x, w1)
        b3 = BatchNormalization (c3, {bn_inputs("a")})
        b1 = BatchNormalization (c1, {bn_inputs("b")})
        y = Add (b3, b1)
    }}
    """, {"W3": q3, "s3": s3, "z3": z3, "W1": q1, "s1": s1, "z1": z1, **bn_params("a", 4, rng),
          **bn_params("b", 4, rng)})
    result = checked_fold(model)
    (branches,) = result.report.by_kind("branches")
    assert branches.outcome == "skipped" and "quantized (QDQ) weights" in branches.reason
    assert [r.quantization for r in result.report.by_kind("batchnorm")] == ["exact", "exact"]
    assert [n.op_type for n in result.model.graph.node].count("DequantizeLinear") == 2
    feeds = x_feed(rng, hw=6)
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds))
