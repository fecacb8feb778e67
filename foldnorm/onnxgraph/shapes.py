"""A weightless skeleton of a model, for checks and shape inference that must not copy big tensors.

`onnx.checker` and shape inference serialize the whole model (hundreds of MB for a ResNet-50) before they
look at it. On the skeleton every large tensor is replaced by a graph input of the same type and shape, so
both see the same structure, types and shapes at a fraction of the cost. `infer_ranks` uses it to prove the
rank of values exporters did not record (the legacy torch exporter often records none), which some folds
need (MatMul + BN).
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

log = logging.getLogger(__name__)

_SMALL = 256  # tensors up to this many elements keep their values (Reshape targets, axes ...)


def weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each initializer over 256 elements (or stored externally) turned into a typed graph input."""
    graph = model.graph
    skeleton = onnx.GraphProto(name=graph.name, doc_string=graph.doc_string)
    skeleton.node.extend(graph.node)
    skeleton.input.extend(graph.input)
    skeleton.output.extend(graph.output)
    skeleton.value_info.extend(graph.value_info)
    skeleton.sparse_initializer.extend(graph.sparse_initializer)
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
    return light


def infer_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The rank of every value of the main graph that shape inference can determine (empty on failure)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless_copy(model), strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        log.debug("shape inference failed: %s", exc)
        return {}
    ranks: dict[str, int] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        t = vi.type
        if t.HasField("tensor_type") and t.tensor_type.HasField("shape"):
            ranks[vi.name] = len(t.tensor_type.shape.dim)
    return ranks
