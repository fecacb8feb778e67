"""A float32 ONNX graph rewritten in float16, for runtimes that are strongly typed (TensorRT 11).

Initializers, `Constant`/`ConstantOfShape` values, graph inputs/outputs/value_info and `Cast(to=FLOAT)`
become float16; other dtypes stay. Subgraphs (If/Loop bodies) are rewritten the same way.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

from foldnorm.onnxgraph.external import tensor_array
from foldnorm.onnxgraph.graph import subgraphs


def _tensor_to_fp16(tensor: TensorProto) -> None:
    if tensor.data_type == TensorProto.FLOAT:
        array = tensor_array(tensor).astype("float16")
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _graph_to_fp16(graph: onnx.GraphProto) -> None:
    for tensor in graph.initializer:
        _tensor_to_fp16(tensor)
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in graph.node:
        for sub in subgraphs(node):
            _graph_to_fp16(sub)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _tensor_to_fp16(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a float32 model (the input is not changed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _graph_to_fp16(out.graph)
    return out
