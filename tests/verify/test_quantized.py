"""Comparing quantized (QDQ) models: tolerances in steps of each output's quantizer, a few outliers allowed."""

from __future__ import annotations

import numpy as np
import onnx
from support.builders import parse
from support.qdq_builders import qdq_conv_bn

from foldnorm import compare_models
from foldnorm.verify.quantized import QDQ_STEPS, is_quantized, outliers_allowed, output_steps, step_tolerance


def test_steps_come_from_the_dequantizer_of_each_output(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng)
    assert is_quantized(model) and output_steps(model) == {"y": np.float32(0.4)}
    assert step_tolerance(0.4, []) == (0.0, QDQ_STEPS * 0.4)
    assert step_tolerance(None, [np.array([-254.0, 3.0])]) == (0.0, QDQ_STEPS * 2.0), "an int8 step of the range"


def test_weight_only_quantization_is_a_quantized_reference_too(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng, pair=False, io_pairs=False)
    assert is_quantized(model) and output_steps(model) == {}, "no output quantizer: an int8 step of the range"


def shifted(model: onnx.ModelProto, steps: float) -> onnx.ModelProto:
    """`model` with its output moved by `steps` steps on its first element only (y + delta * onehot)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    delta = np.zeros((1, 6, 8, 8), np.float32)
    delta[0, 0, 0, 0] = steps * 0.4
    out.graph.output[0].name = "y_quantized"
    for node in out.graph.node:
        node.output[:] = ["y_quantized" if o == "y" else o for o in node.output]
    extra = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 6, 8, 8] y_quantized) => (float[N, 6, 8, 8] y) { y = Add (y_quantized, delta) }
    """, {"delta": delta})
    out.graph.node.extend(extra.graph.node)
    out.graph.initializer.extend(extra.graph.initializer)
    out.graph.output[0].name = "y"
    return out


def test_an_element_beyond_the_steps_is_an_outlier_and_too_many_fail(rng: np.random.Generator) -> None:
    model = qdq_conv_bn(rng)
    near = compare_models(model, shifted(model, 3.5), batch_sizes=(1,))
    assert near.ok and near.outputs[0].mismatched == 0
    far = compare_models(model, shifted(model, 50), batch_sizes=(1,))
    assert far.outputs[0].mismatched == 1 and far.outputs[0].allowed == outliers_allowed(384) == 3 and far.ok
    everywhere = compare_models(model, qdq_conv_bn(np.random.default_rng(99)), batch_sizes=(1,))
    assert not everywhere.ok, "another model's outputs differ in most elements"
    assert compare_models(model, shifted(model, 50), batch_sizes=(1,), atol=1.0).outputs[0].quant_step is None
