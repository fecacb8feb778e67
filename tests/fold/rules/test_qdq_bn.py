"""qdq-bn: a BatchNormalization after a linear op's activation Q/DQ pair (ONNX Runtime's QDQ format) folds
into the op; the pair is rescaled when that is exact, otherwise dropped, moving the quantization point."""

from __future__ import annotations

import numpy as np
import onnx
from support.builders import assert_close, parse, run_ort, x_feed
from support.fold_helpers import assert_not_reported, assert_refused, assert_turned_off, checked_fold
from support.qdq_builders import qdq_conv_bn, quantize_weight

from foldnorm import compare_models


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_the_pair_is_dropped_and_the_point_moves(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng, bias="int32")
    result = checked_fold(model)
    (record,) = result.report.records
    # the target is the Conv, which writes the BN's output `b` now
    assert (record.outcome, record.quantization, record.target) == ("folded", "moved", "b")
    assert "the quantization point moved" in record.reason and "steps of the quantizer after it" in record.reason
    folded = result.model
    assert ops(folded).count("QuantizeLinear") == ops(model).count("QuantizeLinear") - 1
    assert "BatchNormalization" not in ops(folded)
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    assert [n.op_type for n in folded.graph.node if conv.output[0] in n.input] == ["QuantizeLinear"]
    check = compare_models(model, folded, batch_sizes=(1, 4), samples=3)
    assert check.ok and check.outputs[0].quant_step == np.float32(0.4), check.details()
    assert check.max_abs > 0, "dropping a quantization point changes some outputs"


def test_a_uniform_bn_whose_shift_is_whole_steps_moves_the_pair_exactly(rng: np.random.Generator) -> None:
    s, k = 1.7, 5  # BN scale s on every channel, shift t = k * s * (the pair's scale 0.2)
    params = {"bn_scale": np.full(6, s * np.sqrt(1 + 1e-5), np.float32), "bn_var": np.ones(6, np.float32),
              "bn_mean": np.zeros(6, np.float32), "bn_bias": np.full(6, k * s * np.float32(0.2), np.float32)}
    model = qdq_conv_bn(rng, params=params, io_pairs=False)  # a float input: the Conv's bias is a float, exact
    result = checked_fold(model)
    (record,) = result.report.records
    assert record.quantization == "exact" and "rescaled exactly" in record.reason
    folded = result.model
    assert ops(folded).count("QuantizeLinear") == ops(model).count("QuantizeLinear")
    conv = next(n for n in folded.graph.node if n.op_type == "Conv")
    pair_q = next(n for n in folded.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == conv.output[0])
    scale, zero = (onnx.numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == name))
                   for name in pair_q.input[1:])
    assert np.isclose(scale, 0.2 * s) and zero == 3 - k
    feeds = x_feed(rng, hw=8)
    assert_close(run_ort(model, feeds), run_ort(folded, feeds), rtol=1e-5)


def test_a_requantizing_pair_is_refused(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng)
    dq = next(n for n in model.graph.node if n.output[0] == "cd")
    dq.input[1] = "ys"  # DequantizeLinear with another scale than its QuantizeLinear
    assert_refused(model, "requantizes (its two scales or zero points differ)")


def test_what_the_op_before_refuses_is_reported_through_the_pair(rng: np.random.Generator) -> None:
    params = {"bn_scale": np.zeros(6, np.float32), "bn_bias": np.zeros(6, np.float32),
              "bn_mean": np.zeros(6, np.float32), "bn_var": np.ones(6, np.float32)}
    assert_refused(qdq_conv_bn(rng, params=params), "through the Q/DQ pair cq/cd: not folded into Conv")


def test_a_pair_read_elsewhere_is_not_folded_through(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng)
    model.graph.output.append(onnx.helper.make_tensor_value_info("cd", onnx.TensorProto.FLOAT, ["N", 6, 8, 8]))
    assert_refused(model, "is also a graph output")


def test_turned_off(rng: np.random.Generator) -> None:
    assert_turned_off(qdq_conv_bn(rng), "qdq-bn")


def matmul_then(rng: np.random.Generator, tail: str, constant: np.ndarray) -> onnx.ModelProto:
    """`x -> MatMul(DQ(W_q)) -> Q -> DQ -> {tail}(h, c) -> y`: a Linear's bias Add, or a per-column Mul."""
    w = rng.normal(0, 0.5, (5, 6)).astype(np.float32)
    q, ws, wz = quantize_weight(w, axis=1)
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 6] y) {{
        wd = DequantizeLinear <axis = 1> (Wq, ws, wz)
        m = MatMul (x, wd)
        mq = QuantizeLinear (m, ms, mz)
        h = DequantizeLinear (mq, ms, mz)
        y = {tail} (h, c)
    }}
    """, {"Wq": q, "ws": ws, "wz": wz, "ms": np.array(0.05, np.float32), "mz": np.array(0, np.int8), "c": constant})


def test_a_linear_bias_add_behind_the_pair_is_no_tail(rng: np.random.Generator) -> None:
    assert_not_reported(matmul_then(rng, "Add", rng.normal(0, 1, 6).astype(np.float32)))


def test_a_per_column_mul_behind_the_pair_folds_as_a_tail(rng: np.random.Generator) -> None:
    model = matmul_then(rng, "Mul", rng.uniform(0.5, 2, 6).astype(np.float32))
    result = checked_fold(model)
    (record,) = result.report.records
    assert (record.kind, record.outcome, record.quantization) == ("affine", "folded", "moved")
    assert "Mul" not in ops(result.model)
    assert compare_models(model, result.model).ok


def test_a_mul_after_a_pair_behind_a_nonlinear_op_gets_no_record(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 6] x) => (float[N, 6] y) {
        r = Relu (x)
        rq = QuantizeLinear (r, s, z)
        h = DequantizeLinear (rq, s, z)
        y = Mul (h, c)
    }
    """, {"s": np.array(0.05, np.float32), "z": np.array(0, np.int8), "c": rng.uniform(0.5, 2, 6).astype(np.float32)})
    assert_not_reported(model)
