"""Rewiring edits built on `GraphIndex`: a node absorbed into its producer, bypassed, or replaced by an Add.

Each edit keeps the names downstream nodes and graph outputs read, and drops the values it leaves unread.
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.onnxgraph.graph import GraphIndex, is_onnx_op, node_label


def shape_readers(index: GraphIndex, name: str) -> list[onnx.NodeProto]:
    """The nodes that read only the shape or type of `name`, which a fold never changes: `Shape` and `Size` of
    it, and `CastLike` taking its type from it (the dynamo exporter's `CastLike(constant, x)`)."""
    return [n for n in index.consumers.get(name, ())
            if (is_onnx_op(n, "Shape", "Size") and n.input[0] == name)
            or (is_onnx_op(n, "CastLike") and n.input[0] != name)]


def value_reader(index: GraphIndex, name: str) -> onnx.NodeProto | None:
    """The single node reading the values of `name` (besides its `shape_readers`), or None when there are
    several or it is a graph output."""
    metadata = shape_readers(index, name)
    readers = [n for n in index.consumers.get(name, ()) if n not in metadata]
    return readers[0] if len(readers) == 1 and name not in index.graph_outputs else None


def absorb(index: GraphIndex, node: onnx.NodeProto, producer: onnx.NodeProto) -> None:
    """Remove `node`, letting `producer` write its output name (so downstream names never change)."""
    old_out = producer.output[0]
    out = node.output[0]
    params = [i for i in node.input if i and i != old_out]
    index.remove_node(node)
    index.set_output(producer, 0, out)
    for reader in shape_readers(index, old_out):  # the folded output has the same shape
        index.set_input(reader, list(reader.input).index(old_out), out)
    index.remove_if_dead([old_out, *params])


def append_bias(index: GraphIndex, node: onnx.NodeProto, producer: onnx.NodeProto, bias: np.ndarray) -> None:
    """Replace `node` by `Add(producer output, bias)` writing node's output (same name and metadata)."""
    bias_name = index.add_initializer(f"{node_label(node)}.bias".replace("/", ".").strip("."), bias)
    add = onnx.helper.make_node("Add", [producer.output[0], bias_name], [node.output[0]], name=node.name)
    add.metadata_props.extend(node.metadata_props)
    params = list(node.input[1:])
    index.insert_before(node, [add])
    index.remove_node(node)
    index.remove_if_dead(params)


def bypass(index: GraphIndex, node: onnx.NodeProto, consumer: onnx.NodeProto) -> None:
    """Remove `node`, feeding its input straight to `consumer` (which reads node's output as input 0) and to the
    `shape_readers` of its output (the input has the same shape and type)."""
    old_out = node.output[0]
    params = list(node.input[1:])
    index.remove_node(node)
    index.set_input(consumer, 0, node.input[0])
    for reader in shape_readers(index, old_out):
        index.set_input(reader, list(reader.input).index(old_out), node.input[0])
    index.remove_if_dead([old_out, *params])
