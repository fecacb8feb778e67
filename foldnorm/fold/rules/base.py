"""The pass contract and the shared context passes work in.

A pass is asked `check(ctx, bn, neighbour, params)`: it returns a `Plan` (everything computed, nothing
changed yet) or a reason sentence for leaving the node alone. `plan.apply()` then performs the rewrite.
Refusing is not an error: the engine records a `skipped` entry with the sentence.

The node being folded is a BatchNormalization or a per-channel Mul/Add/Sub/Div with a constant; either
way the engine hands the pass its affine map as `ChannelParams`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import onnx

from foldnorm.errors import InvalidModelError
from foldnorm.fold.bn_math import ChannelAffine
from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex, attr, is_onnx_op, node_label

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


@dataclass(frozen=True)
class FoldOptions:
    """User-facing switches of the fold engine."""

    standalone_bn: Literal["keep", "affine"] = "keep"


@dataclass(frozen=True)
class ChannelParams:
    """A per-channel affine map resolved to constants, and the axis it acts on.

    `axis >= 0` counts from the front of the tensor (BatchNorm: 1), `axis < 0` from the back (a constant
    `[C, 1, 1]` is -3), and `axis=None` means the map is the same for every channel (a scalar constant).
    """

    affine: ChannelAffine
    param_dtype: np.dtype
    axis: int | None = 1
    #: rank of the constant operand; it must not exceed the tensor's rank (broadcasting would grow it).
    const_rank: int = 0
    #: the node the map comes from; for a BatchNorm a channel-count mismatch means an invalid model.
    source: str = ""
    strict: bool = True

    @property
    def channels(self) -> int:
        """Channel count of the map (1 for a scalar map)."""
        return self.affine.channels

    def on_axis(self, rank: int | None, channel_axis: int, channels: int) -> ChannelAffine | str:
        """The map as `channels` entries when it acts on `channel_axis` of a rank-`rank` tensor, else why not.

        `channel_axis` may be negative (MatMul's last axis); `rank=None` means the rank is unknown.
        """
        if rank is not None and self.const_rank > rank:
            return f"the constant has rank {self.const_rank}, more than the tensor's rank {rank}"
        if rank is None and self.const_rank > 1:
            return "the tensor's rank is unknown, so broadcasting the constant cannot be proved harmless"
        if self.axis is None:
            affine = self.affine
            return ChannelAffine(np.broadcast_to(affine.scale, (channels,)).copy(),
                                 np.broadcast_to(affine.shift, (channels,)).copy())
        if self.axis == channel_axis:
            same = True
        elif rank is None:
            same = False
        else:
            same = self.axis % rank == channel_axis % rank
        if not same:
            where = f"axis {self.axis}" if rank is None else f"axis {self.axis % rank} of {rank}"
            target = f"axis {channel_axis}" if rank is None else f"axis {channel_axis % rank}"
            proof = "" if rank is not None else " (the rank is unknown, so this cannot be proved)"
            return f"it acts on {where}, not on the producer's output-channel {target}{proof}"
        if self.channels != channels:
            if self.strict:
                raise InvalidModelError(
                    f"BatchNormalization {self.source} has {self.channels} parameters but the op it meets has "
                    f"{channels} channels on that axis; fix the model (re-export it) before folding."
                )
            return f"it has {self.channels} channels but the producer has {channels} output channels"
        return self.affine



@dataclass
class Plan:
    """A checked fold, ready to apply: `apply()` performs the rewrite."""

    target: onnx.NodeProto
    apply: Callable[[], None]
    note: str = ""


@dataclass
class FoldContext:
    """One graph being folded: its index, constant resolver and options."""

    index: GraphIndex
    constants: ConstantResolver
    options: FoldOptions = field(default_factory=FoldOptions)
    #: sentences the last `apply()` wants in its record (e.g. a shared weight was duplicated).
    notes: list[str] = field(default_factory=list)
    #: the model whose main graph this is, for shape inference when a rank is not recorded (None: subgraph).
    model: onnx.ModelProto | None = None
    _ranks: dict[str, int] | None = None

    def constant(self, name: str) -> np.ndarray | None:
        """The constant value of `name`, or None."""
        return self.constants.value(name)

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

    def _inferred_rank(self, name: str) -> int | None:
        if self.model is None:
            return None
        if self._ranks is None:
            from foldnorm.onnxgraph.shapes import infer_ranks

            self._ranks = infer_ranks(self.model)
        return self._ranks.get(name)

    def elem_type(self, name: str, depth: int = 0) -> int | None:
        """The ONNX element type of `name`: recorded, or that of the data input of a dtype-preserving producer."""
        elem = self.index.elem_type(name)
        if elem is not None:
            return elem
        producer = self.index.producer.get(name)
        if (producer is None or depth > 64 or not is_onnx_op(producer, *_DTYPE_PRESERVING)
                or not producer.input):
            return None
        return self.elem_type(producer.input[0], depth + 1)

    def set_param(self, node: onnx.NodeProto, input_index: int, array: np.ndarray, suffix: str) -> str:
        """Give `node` input `input_index` the constant `array`.

        A local initializer read only by `node` is overwritten in place; anything shared, routed through
        Identity/Constant nodes or from an enclosing scope is left alone and a new initializer is added
        (a shared tensor is never edited: the record says it was duplicated).
        Returns the name of the tensor now feeding the input.
        """
        index = self.index
        old = node.input[input_index] if input_index < len(node.input) else ""
        if old and index.local_initializer(old) is not None and index.uses(old) == 1:
            index.overwrite_initializer(old, array)
            self.constants.forget(old)
            return old
        base = f"{node_label(node)}.{suffix}".replace("/", ".").strip(".")
        name = index.add_initializer(base, array)
        index.set_input(node, input_index, name)
        if old:
            chain = self._source_chain(old)
            outer = chain[-1] not in index.initializers and chain[-1] not in index.producer
            index.remove_if_dead([old])
            if any(index.uses(n) for n in chain):
                self.notes.append(f"{suffix} {chain[-1]!r} is shared with other nodes: folded into a copy "
                                  f"{name!r}, the shared tensor is unchanged")
            elif outer:
                self.notes.append(f"{suffix} {chain[-1]!r} comes from an enclosing graph: folded into a "
                                  f"copy {name!r}")
        return name

    def _source_chain(self, name: str) -> list[str]:
        """`name` and the values it is routed from through single-input nodes (Identity, Cast ...)."""
        chain = [name]
        producer = self.index.producer.get(name)
        while producer is not None and len([i for i in producer.input if i]) == 1 and len(chain) < 32:
            chain.append(producer.input[0])
            producer = self.index.producer.get(producer.input[0])
        return chain

    def absorb(self, node: onnx.NodeProto, producer: onnx.NodeProto) -> None:
        """Remove `node`, letting `producer` write its output name (so downstream names never change)."""
        index = self.index
        old_out = producer.output[0]
        out = node.output[0]
        params = [i for i in node.input if i and i != old_out]
        index.remove_node(node)
        index.set_output(producer, 0, out)
        for reader in shape_readers(index, old_out):  # the folded output has the same shape
            index.set_input(reader, list(reader.input).index(old_out), out)
        index.remove_if_dead([old_out, *params])

    def append_bias(self, node: onnx.NodeProto, producer: onnx.NodeProto, bias: np.ndarray) -> None:
        """Replace `node` by `Add(producer output, bias)` writing node's output (same name and metadata)."""
        index = self.index
        bias_name = index.add_initializer(f"{node_label(node)}.bias".replace("/", ".").strip("."), bias)
        add = onnx.helper.make_node("Add", [producer.output[0], bias_name], [node.output[0]], name=node.name)
        add.metadata_props.extend(node.metadata_props)
        params = list(node.input[1:])
        index.insert_before(node, [add])
        index.remove_node(node)
        index.remove_if_dead(params)

    def bypass(self, node: onnx.NodeProto, consumer: onnx.NodeProto) -> None:
        """Remove `node`, feeding its input straight to `consumer` (which reads node's output as input 0)."""
        index = self.index
        old_out = node.output[0]
        params = list(node.input[1:])
        index.remove_node(node)
        index.set_input(consumer, 0, node.input[0])
        index.remove_if_dead([old_out, *params])


def shape_readers(index: GraphIndex, name: str) -> list[onnx.NodeProto]:
    """The `Shape` nodes reading `name`: they read only its shape, which a fold never changes."""
    return [n for n in index.consumers.get(name, ()) if is_onnx_op(n, "Shape") and n.input[0] == name]


def is_float(array: np.ndarray) -> bool:
    """Whether `array` holds a floating type (bfloat16 included)."""
    return bool(np.issubdtype(array.dtype, np.floating)) or array.dtype.name == "bfloat16"


def group_of(node: onnx.NodeProto) -> int:
    """The `group` attribute of a (transposed) convolution."""
    return int(attr(node, "group", 1))


class AnyNeighbour:
    """Mixin for passes that take every neighbour of their `op_types` (refusals come from `check`)."""

    def accepts(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """Every node of the pass's op types qualifies."""
        return True


class BatchNormPass(Protocol):
    """Folds a per-channel affine node (a BatchNorm, or a Mul/Add/Sub/Div chain) into one neighbour."""

    name: str
    #: "after": the neighbour produces the node's input; "before": the neighbour consumes its output.
    position: Literal["after", "before"]
    #: op types of the neighbour this pass handles.
    op_types: tuple[str, ...]

    def accepts(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """Whether `neighbour` has the structure this pass folds into (cheap; no reasons)."""
        ...

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, neighbour: onnx.NodeProto,
              params: ChannelParams) -> Plan | str:
        """Return a plan for folding `bn` into `neighbour`, or a sentence saying why not."""
        ...
