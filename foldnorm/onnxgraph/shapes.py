"""Shapes without copying weights: a weightless skeleton for checks and shape inference, and the ranks and
element types a graph proves.

`onnx.checker` and shape inference serialize the whole model (hundreds of MB for a ResNet-50) before they
look at it. On the skeleton every large tensor is replaced by a graph input of the same type and shape, so
both see the same structure, types and shapes at a fraction of the cost. `infer_types` uses it to prove the
ranks, dims and element types of values exporters did not record (the legacy torch exporter often records
none), which some folds need (MatMul + BN, Concat + BN, a standalone BN lowered to Mul + Add).
`ShapeProver` answers "what rank (dtype, length of an axis) does this value have" from recorded shapes,
producers that keep their input's rank (dtype), and, last, that inference.
"""

from __future__ import annotations

import logging

import onnx
from onnx import helper

from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex, is_onnx_op
from foldnorm.onnxgraph.tensors import element_count

log = logging.getLogger(__name__)

_SMALL = 256  # tensors up to this many elements keep their values (Reshape targets, axes ...)


_PIECE = 4096  # nodes, tensors or value infos serialized at a time by `weightless_bytes`


def weightless_bytes(model: onnx.ModelProto) -> bytes:
    """`model` serialized with each initializer over 256 elements (or stored externally), and each main-graph
    Constant node whose tensor is stored externally, turned into a typed graph input: its skeleton, for
    onnx.checker and shape inference.

    Nothing is copied whole: the long repeated fields (nodes, the initializers kept, value infos) are serialized
    a slice at a time, each slice as a model of its own; protobuf reads the concatenation as one message.
    """
    graph = model.graph
    head = onnx.GraphProto(name=graph.name, doc_string=graph.doc_string)
    head.input.extend(graph.input)
    nodes = []
    for node in graph.node:
        stored = _external_constant(node)
        if stored is None:
            nodes.append(node)
        else:
            head.input.append(helper.make_tensor_value_info(node.output[0], stored.data_type, list(stored.dims)))
    head.output.extend(graph.output)
    head.sparse_initializer.extend(graph.sparse_initializer)
    inputs = {i.name for i in graph.input}
    kept = []
    for tensor in graph.initializer:
        if element_count(tensor) <= _SMALL and tensor.data_location != onnx.TensorProto.EXTERNAL:
            kept.append(tensor)
        elif tensor.name not in inputs:
            head.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    light = helper.make_model(head, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    light.functions.extend(model.functions)
    pieces = [light.SerializeToString()]
    for field, items in (("node", nodes), ("initializer", kept), ("value_info", graph.value_info)):
        for start in range(0, len(items), _PIECE):
            piece = onnx.ModelProto()
            getattr(piece.graph, field).extend(items[start:start + _PIECE])
            pieces.append(piece.SerializeToString())
    return b"".join(pieces)


def weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`'s skeleton (`weightless_bytes`) as a message of its own, to edit."""
    return onnx.ModelProto.FromString(weightless_bytes(model))


def _external_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor of a Constant node that holds it in an external data file, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    value = node.attribute[0]
    stored = value.name == "value" and value.t.data_location == onnx.TensorProto.EXTERNAL
    return value.t if stored else None


def infer_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto.Tensor]:
    """The tensor type (element type, and shape as far as known) of every value of the main graph that shape
    inference can determine (empty on failure)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(weightless_bytes(model), strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        log.debug("shape inference failed: %s", exc)
        return {}
    return {vi.name: vi.type.tensor_type for vi in [*inferred.graph.value_info, *inferred.graph.output,
                                                    *inferred.graph.input] if vi.type.HasField("tensor_type")}


# Ops whose output has the rank of their first input (used to prove ranks without shape inference).
_RANK_PRESERVING = {
    "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Identity", "Neg", "Abs", "Exp",
    "Log", "Sqrt", "Erf", "Gelu", "HardSigmoid", "HardSwish", "Mish", "Softplus", "Elu", "Selu", "Cast",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "Dropout", "Softmax", "PRelu",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Concat", "Resize", "Pad",
}
# Ops whose output has the dtype of their first input.
_DTYPE_PRESERVING = (_RANK_PRESERVING - {"Cast"}) | {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Reshape", "Flatten", "Transpose",
    "Squeeze", "Unsqueeze", "Slice", "Split", "Expand", "Tile", "ReduceMean",
}


class ShapeProver:
    """The rank and element type of a graph's values, where the graph proves them.

    A recorded shape or type is used first; otherwise the value's producer is followed through ops that
    keep the rank (or dtype) of their first input, and, for the main graph of `model`, shape inference on a
    weightless copy is the last resort (run once, on first need).
    """

    def __init__(self, index: GraphIndex, constants: ConstantResolver, model: onnx.ModelProto | None = None) -> None:
        self.index = index
        self.constants = constants
        self.model = model
        self._inferred: dict[str, onnx.TypeProto.Tensor] | None = None

    def rank(self, name: str, depth: int = 0) -> int | None:
        """The rank of value `name` when the graph proves it (recorded shape, or a rank-preserving producer)."""
        shape = self.index.shape(name)
        if shape is not None:
            return len(shape)
        producer = self.index.producer.get(name)
        if producer is None or depth > 32 or producer.domain not in ("", "ai.onnx"):
            return self._inferred_rank(name)
        op = producer.op_type
        if op in ("Conv", "ConvTranspose") and len(producer.input) > 1:
            weight = self.index.shape(producer.input[1])
            if weight is None:
                known = self.constants.value(producer.input[1])
                weight = list(known.shape) if known is not None else None
            return len(weight) if weight is not None else None
        if op == "Gemm":
            return 2
        if op in _RANK_PRESERVING and producer.input:
            return self.rank(producer.input[0], depth + 1)
        return self._inferred_rank(name)

    def dim(self, name: str, axis: int) -> int | None:
        """The static length of axis `axis` (negative: from the back) of `name`: recorded, else inferred."""
        for dims in (self.index.shape(name), self._inferred_shape(name)):
            length = dims[axis] if dims is not None and -len(dims) <= axis < len(dims) else None
            if isinstance(length, int):
                return length
        return None

    def _inferred_rank(self, name: str) -> int | None:
        dims = self._inferred_shape(name)
        return None if dims is None else len(dims)

    def _inferred_type(self, name: str) -> onnx.TypeProto.Tensor | None:
        if self.model is None:
            return None
        if self._inferred is None:
            self._inferred = infer_types(self.model)
        return self._inferred.get(name)

    def _inferred_shape(self, name: str) -> list[int | None] | None:
        tensor = self._inferred_type(name)
        if tensor is None or not tensor.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type of `name`: recorded, that of the data input of a dtype-preserving producer, or,
        last, inferred (legacy exports record few types, and long chains of such producers)."""
        elem = self._traced_elem_type(name, 0)
        if elem is None:
            tensor = self._inferred_type(name)
            elem = tensor.elem_type if tensor is not None and tensor.elem_type else None
        return elem

    def _traced_elem_type(self, name: str, depth: int) -> int | None:
        elem = self.index.elem_type(name)
        if elem is not None:
            return elem
        producer = self.index.producer.get(name)
        if (producer is None or depth > 64 or not is_onnx_op(producer, *_DTYPE_PRESERVING)
                or not producer.input):
            return None
        return self._traced_elem_type(producer.input[0], depth + 1)
