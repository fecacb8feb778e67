"""conv-bn: BatchNormalization after Conv (any groups, bias or not, fp16/fp32, BN-15 mixed precision)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import assert_close, bn_inputs, bn_params, conv_bn, op_count, run_ort, x_feed
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off, checked_fold

from foldnorm.errors import InvalidModelError


@pytest.mark.parametrize(("group", "bias"), [(1, True), (1, False), (2, True), (4, False)])
def test_conv_bn_folds(rng: np.random.Generator, group: int, bias: bool) -> None:
    cin, cout = (4, 8) if group == 4 else (4, 6)
    model = conv_bn(rng, group=group, bias=bias, cin=cin, cout=cout, bn_attrs="<epsilon = 0.001>")
    x = x_feed(rng, cin, hw=8)
    expected = run_ort(model, x)
    result = checked_fold(model)
    folded = result.model
    assert op_count(folded, "BatchNormalization") == 0
    assert op_count(model, "BatchNormalization") == 1, "the input model must not be modified"
    assert [o.name for o in folded.graph.output] == ["y"]
    assert_close(expected, run_ort(folded, x))
    (record,) = result.report.records
    assert (record.outcome, record.kind, record.op_type) == ("folded", "batchnorm", "BatchNormalization")
    assert record.target is not None


def test_fold_twice_changes_nothing(rng: np.random.Generator) -> None:
    once = checked_fold(conv_bn(rng, bias=True)).model
    twice = checked_fold(once)
    assert twice.model.SerializeToString() == once.SerializeToString()
    assert twice.report.records == []


def test_conv_bn_bn_folds_both(rng: np.random.Generator) -> None:
    # The first BN folds into the Conv, which then produces the second BN's input: conv-bn again.
    model = conv_bn(rng, spatial=(6, 6), bn_out="h", inits=bn_params("b", 6, rng),
                    tail=[f"y = BatchNormalization <epsilon = 0.1> (h, {bn_inputs('b')})"])
    result = assert_folds(model, x_feed(rng, hw=6), folded=2)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def test_conv_weight_as_graph_input_is_skipped(rng: np.random.Generator) -> None:
    assert_refused(conv_bn(rng, graph_inputs="float[6, 4, 3, 3] W"), "'W' of Conv c is a graph input")


def test_fp16_overflow_is_skipped(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng, np.float16)
    p["bn_scale"][1] = 60000.0
    p["bn_var"][1] = 0.0001
    assert_refused(conv_bn(rng, spatial=(6, 6), dtype="float16", params=p), "exceeds the float16 range")


def test_fp16_underflow_is_skipped(rng: np.random.Generator) -> None:
    p = bn_params("bn", 6, rng, np.float16)
    p["bn_scale"][3] = 1e-7
    assert_refused(conv_bn(rng, spatial=(6, 6), dtype="float16", params=p, w_scale=0.01), "underflows float16")


def test_bn_channel_count_mismatch_is_a_user_error(rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=(6, 6))  # made invalid after parsing: the checker would refuse it
    short = bn_params("bn", 5, rng)
    for t in model.graph.initializer:
        if t.name in short:
            t.CopyFrom(onnx.numpy_helper.from_array(short[t.name], t.name))
    with pytest.raises(InvalidModelError, match="fix the model"):
        checked_fold(model)


def test_fp16_conv_bn_folds(rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=(6, 6), dtype="float16")
    result = assert_folds(model, x_feed(rng, hw=6, dtype=np.float16), rtol=1e-2)
    assert {t.data_type for t in result.model.graph.initializer} == {onnx.TensorProto.FLOAT16}


def test_mixed_precision_bn15_emits_in_the_conv_dtype(rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=(6, 6), dtype="float16", param_dtype=np.float32)
    result = assert_folds(model, x_feed(rng, hw=6, dtype=np.float16), rtol=1e-2)
    assert {t.data_type for t in result.model.graph.initializer} == {onnx.TensorProto.FLOAT16}


def test_skip_conv_bn_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    result = assert_turned_off(conv_bn(rng), "conv-bn")
    assert [r.outcome for r in result.report.records] == ["skipped"]
