"""concat-bn: a BatchNormalization after a Concat on the channel axis (MixNet), split by the Concat's inputs and
folded slice by slice into their producers by those producers' rules; all or nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import bn_inputs, bn_params, parse, x_feed
from support.fold_helpers import assert_folds, assert_refused, assert_turned_off

from foldnorm import FoldOptions


def mixed_conv_model(rng: np.random.Generator, *, axis: int = 1, record: bool = False, third: str = "",
                     extra: int = 0, inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """x -> Conv 3x3 (2 channels, bias) and Conv 5x5 (4 channels, group 2) -> Concat(axis) -> BN: MixNet's mixed
    depthwise conv. `third` is a line making a third Concat input `e` of `extra` channels (`inits`: its tensors).
    `record` declares the conv outputs' shapes (the dynamo exporter records them; the legacy one does not, so
    they are inferred)."""
    channels = 6 + extra
    arrays = {"Wa": rng.normal(0, 0.5, (2, 4, 3, 3)).astype(np.float32), "Ba": rng.normal(0, 0.5, 2).astype(np.float32),
              "Wb": rng.normal(0, 0.5, (4, 2, 5, 5)).astype(np.float32), **(inits or {}),
              **bn_params("bn", channels, rng)}
    records = "<float[N, 2, 6, 6] a, float[N, 4, 6, 6] b>" if record else ""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, {channels}, 6, 6] y) {records} {{
        a = Conv <pads = [1, 1, 1, 1]> (x, Wa, Ba)
        b = Conv <pads = [2, 2, 2, 2], group = 2> (x, Wb)
        {third}
        c = Concat <axis = {axis}> (a, b{", e" if third else ""})
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, arrays)


def one_by_one_model(rng: np.random.Generator, inputs: str = "a, b", *, axis: int = 1,
                     out: str = "float[N, 8, 6, 6] y") -> onnx.ModelProto:
    """1x1 Convs `a` and `b` sharing their weight (as many as `inputs` names) -> Concat(inputs, axis) -> BN."""
    convs = "\n        ".join(f"{name} = Conv (x, W)" for name in dict.fromkeys(inputs.replace(" ", "").split(",")))
    channels = 4 * len(inputs.split(",")) if axis == 1 else 4
    inits = {"W": rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), **bn_params("bn", channels, rng)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => ({out}) {{
        {convs}
        c = Concat <axis = {axis}> ({inputs})
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)


@pytest.mark.parametrize(("axis", "record"), [(1, False), (1, True), (-3, False)])
def test_bn_after_a_channel_concat_of_convs_folds_into_each_conv(rng: np.random.Generator, axis: int,
                                                                 record: bool) -> None:
    result = assert_folds(mixed_conv_model(rng, axis=axis, record=record), x_feed(rng))
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Conv", "Concat"]
    assert result.report.records[0].reason == "split by Concat c into Conv a, Conv b"


def test_slices_fold_by_the_rule_of_each_producer(rng: np.random.Generator) -> None:
    # A ConvTranspose slice, and a BN before the Concat whose slice merges into it (bn-bn).
    third = f"""t = ConvTranspose <pads = [1, 1, 1, 1]> (x, Wt)
        e = BatchNormalization (t, {bn_inputs("pre")})"""
    model = mixed_conv_model(rng, third=third, extra=3, inits={
        "Wt": rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), **bn_params("pre", 3, rng)})
    result = assert_folds(model, x_feed(rng), folded=2)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Conv", "ConvTranspose", "Concat"]


def test_slices_into_convs_sharing_a_weight_fold_into_copies(rng: np.random.Generator) -> None:
    result = assert_folds(one_by_one_model(rng), x_feed(rng))
    weights = {n.input[1] for n in result.model.graph.node if n.op_type == "Conv"}
    assert len(weights) == 2, "each conv gets its own folded weight"
    assert "is shared with other nodes" in result.report.records[0].reason


def test_a_bias_free_matmul_slice_gets_its_bias_add(rng: np.random.Generator) -> None:
    # The slice rule (matmul-bn) adds a node: it lands between the MatMul and the Concat.
    inits = {"W": rng.normal(0, 0.5, (5, 3)).astype(np.float32), "B": rng.normal(0, 0.5, (5, 2)).astype(np.float32),
             **bn_params("bn", 5, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 5] y) {{
        m = MatMul (x, W)
        k = Gemm (x, B)
        c = Concat <axis = 1> (m, k)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)
    result = assert_folds(model, {"x": rng.normal(0, 1, (3, 5)).astype(np.float32)})
    assert [n.op_type for n in result.model.graph.node] == ["MatMul", "Gemm", "Add", "Concat"]


def test_concat_on_another_axis_is_refused(rng: np.random.Generator) -> None:
    model = one_by_one_model(rng, axis=2, out="float[N, 4, 12, 6] y")
    assert_refused(model, "Concat c concatenates along axis 2, not the BN's channel axis 1")


def test_one_slice_that_cannot_fold_keeps_the_whole_bn(rng: np.random.Generator) -> None:
    model = mixed_conv_model(rng, third="e = Relu (x)", extra=4)
    assert_refused(model, "channels 6-9 (input 2 of Concat c) cannot fold: Relu e: no rule folds into it")


def test_a_slice_whose_producer_is_read_elsewhere_keeps_the_bn(rng: np.random.Generator) -> None:
    model = mixed_conv_model(rng)
    model.graph.output.append(onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["N", 4, 6, 6]))
    assert_refused(model, "channels 2-5 (input 1 of Concat c) cannot fold: the output of Conv b is also read "
                          "elsewhere")


def test_the_same_producer_twice_keeps_the_bn(rng: np.random.Generator) -> None:
    assert_refused(one_by_one_model(rng, "a, a"),
                   "channels 0-3 (input 0 of Concat c) cannot fold: the output of Conv a is also read")


def test_a_graph_input_slice_keeps_the_bn(rng: np.random.Generator) -> None:
    model = mixed_conv_model(rng, third="e = Identity (x)", extra=4)
    concat = model.graph.node[3]
    concat.input[2] = "x"
    del model.graph.node[2]
    assert_refused(model, "channels 6-9 (input 2 of Concat c) come from a graph input")


def test_an_unknown_channel_count_keeps_the_bn(rng: np.random.Generator) -> None:
    # The convs read a Reshape to a run-time shape: neither a record nor shape inference sizes their outputs.
    inits = {"W": rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), **bn_params("bn", 8, rng)}
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x, int64[K] shape) => (float[N, 8, 6, 6] y) {{
        r = Reshape (x, shape)
        a = Conv (r, W)
        b = Conv (r, W)
        c = Concat <axis = 1> (a, b)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)
    assert_refused(model, "the channel count of input 0 of Concat c cannot be proved")


def test_skip_concat_bn_keeps_the_bn_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(mixed_conv_model(rng), "concat-bn")


def test_skip_of_a_slice_rule_is_honoured(rng: np.random.Generator) -> None:
    assert_refused(mixed_conv_model(rng), "cannot fold: Conv a: rule conv-bn is turned off (--skip conv-bn)",
                   options=FoldOptions(skip=("conv-bn",)))
