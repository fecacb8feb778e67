"""Ranks of intermediate values by ONNX shape inference on a weightless skeleton of the model.

Exporters do not always record intermediate shapes (the legacy torch exporter often does not), and some
folds are only safe when a rank is proved (MatMul + BN). Inference runs on a copy whose large tensors are
replaced by typed graph inputs of the same shape, so it costs little memory even for big models.
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

log = logging.getLogger(__name__)

_SMALL = 256  # tensors up to this many elements keep their values (Reshape targets, axes ...)


def infer_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value of the main graph that shape inference can determine (empty on failure)."""
    graph = model.graph
    skeleton = onnx.GraphProto(name=graph.name)
    skeleton.node.extend(graph.node)
    skeleton.input.extend(graph.input)
    skeleton.output.extend(graph.output)
    skeleton.value_info.extend(graph.value_info)
    inputs = {i.name for i in graph.input}
    for tensor in graph.initializer:
        count = 1
        for d in tensor.dims:
            count *= d
        if count <= _SMALL and tensor.data_location != onnx.TensorProto.EXTERNAL:
            skeleton.initializer.append(tensor)
        elif tensor.name not in inputs:
            skeleton.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    light = helper.make_model(skeleton, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    light.functions.extend(model.functions)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        log.debug("shape inference failed: %s", exc)
        return {}
    ranks: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        t = vi.type
        if t.HasField("tensor_type") and t.tensor_type.HasField("shape"):
            ranks[vi.name] = len(t.tensor_type.shape.dim)
    return ranks
