"""A float32 ONNX graph rewritten in float16, for runtimes that are strongly typed (TensorRT 11).

Initializers, `Constant` values (`value`, `value_float`, `value_floats`), `ConstantOfShape` values, graph
inputs/outputs/value_info and `Cast(to=FLOAT)` become float16; other dtypes stay. Where an op's schema fixes
an input or output to float32 (Resize's and Upsample's `scales`, DequantizeLinear-13's scale and output), a
Cast keeps that edge float32 so the graph stays valid. A float32 value that float16 cannot hold (|x| above
65504, which would silently become inf) is refused. Subgraphs (If/Loop bodies) are rewritten the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from foldnorm.errors import FoldnormError
from foldnorm.onnxgraph.external import tensor_array
from foldnorm.onnxgraph.graph import subgraphs

FLOAT32_ONLY = "tensor(float)"


def _half(array: np.ndarray, what: str) -> np.ndarray:
    """`array` in float16; FoldnormError when a finite value would become inf."""
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    overflow = np.isinf(half) & np.isfinite(array)
    if overflow.any():
        worst = float(np.max(np.abs(array[overflow])))
        raise FoldnormError(f"{what} holds {worst:.6g}, beyond float16's largest value 65504 (it would become inf); "
                            "run this model in fp32")
    return half


def _tensor_to_fp16(tensor: TensorProto, what: str) -> None:
    if tensor.data_type == TensorProto.FLOAT:
        tensor.CopyFrom(numpy_helper.from_array(_half(tensor_array(tensor), what), tensor.name))


def _constant_floats_to_fp16(node: onnx.NodeProto) -> None:
    """A Constant's `value_float`/`value_floats` (always float32) becomes a float16 `value` tensor."""
    for index, attr in enumerate(node.attribute):
        if attr.name in ("value_float", "value_floats"):
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
            half = _half(values, f"Constant {node.name or node.output[0]!r}")
            del node.attribute[index]
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(half)))
            return


def _formals(schema: onnx.defs.OpSchema, count: int, outputs: bool) -> Iterator[str]:
    """The type string of the formal parameter behind each of `count` actual inputs (or outputs)."""
    params = schema.outputs if outputs else schema.inputs
    for index in range(count):
        if not params:
            return
        param = params[min(index, len(params) - 1)]  # a variadic last parameter takes the rest
        yield param.type_str


def _schema(node: onnx.NodeProto, opsets: Mapping[str, int]) -> onnx.defs.OpSchema | None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in opsets:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opsets[domain], domain)
    except onnx.defs.SchemaError:
        return None


def _keep_float32_edges(graph: onnx.GraphProto, opsets: Mapping[str, int]) -> None:
    """Insert Casts around inputs and outputs that the op's schema fixes to float32."""
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        schema = _schema(node, opsets)
        after: list[onnx.NodeProto] = []
        if schema is not None:
            for index, type_str in enumerate(_formals(schema, len(node.input), outputs=False)):
                name = node.input[index]
                if type_str == FLOAT32_ONLY and name:
                    node.input[index] = f"{name}__fp32_for_{node.output[0]}"
                    nodes.append(helper.make_node("Cast", [name], [node.input[index]], to=TensorProto.FLOAT,
                                                  name=f"{node.input[index]}/Cast"))
            for index, type_str in enumerate(_formals(schema, len(node.output), outputs=True)):
                name = node.output[index]
                if type_str == FLOAT32_ONLY and name:
                    node.output[index] = f"{name}__fp32"
                    after.append(helper.make_node("Cast", [node.output[index]], [name], to=TensorProto.FLOAT16,
                                                  name=f"{name}/Cast"))
        nodes += [node, *after]
    del graph.node[:]
    graph.node.extend(nodes)


def _graph_to_fp16(graph: onnx.GraphProto, opsets: Mapping[str, int]) -> None:
    for tensor in graph.initializer:
        _tensor_to_fp16(tensor, f"initializer {tensor.name!r}")
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in graph.node:
        for sub in subgraphs(node):
            _graph_to_fp16(sub, opsets)
        if node.op_type == "Constant":
            _constant_floats_to_fp16(node)
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                _tensor_to_fp16(attr.t, f"{node.op_type} {node.name or node.output[0]!r}")
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    _keep_float32_edges(graph, opsets)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of a float32 model (the input is not changed); FoldnormError naming the tensor when a value
    is beyond float16's range."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in out.opset_import}
    _graph_to_fp16(out.graph, opsets)
    return out
