"""Tidy a raw exporter graph without folding anything.

The unoptimized dynamo exporter computes the zero bias of a bias-less Conv at run time
(`Expand(CastLike(0, x), Shape(W))`, sometimes with a wrong rank for Conv3d), builds other constants the same
way, and leaves nodes whose outputs nothing reads. Here a Conv/ConvTranspose bias that evaluates to zeros is
dropped (the op's own default), other run-time constant chains (`Expand`, `CastLike`, `ConstantOfShape`)
become plain initializers, and dead nodes and initializers are removed. No BatchNormalization, GroupNorm,
LayerNorm or InstanceNorm node is touched, and nothing is folded into anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex

_BIAS_OPS = ("Conv", "ConvTranspose")
_MATERIALIZE = ("Expand", "CastLike", "ConstantOfShape")


@dataclass
class CleanupStats:
    """What the cleanup changed."""

    zero_biases_dropped: int = 0
    constants_materialized: int = 0
    nodes_removed: int = 0
    initializers_removed: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counts as plain data."""
        return asdict(self)


def clean_export(model: onnx.ModelProto) -> CleanupStats:
    """Clean `model`'s main graph in place (see the module docstring) and return what changed."""
    graph = model.graph
    nodes_before, inits_before = len(graph.node), len(graph.initializer)
    index = GraphIndex(graph)
    constants = ConstantResolver(index)
    stats = CleanupStats()
    for node in list(index.nodes):
        if node.op_type in _BIAS_OPS and node.domain in ("", "ai.onnx") and _drop_zero_bias(index, constants, node):
            stats.zero_biases_dropped += 1
    for node in list(index.nodes):
        if node.op_type in _MATERIALIZE and node.domain in ("", "ai.onnx") and _materialize(index, constants, node):
            stats.constants_materialized += 1
    for node in reversed(index.nodes):
        if not any(index.uses(o) for o in node.output if o):
            index.remove_if_dead([o for o in node.output if o])
    index.remove_if_dead(list(index.initializers))
    index.commit()
    added = stats.constants_materialized
    stats.nodes_removed = nodes_before - len(graph.node)
    stats.initializers_removed = inits_before + added - len(graph.initializer)
    return stats


def _drop_zero_bias(index: GraphIndex, constants: ConstantResolver, node: onnx.NodeProto) -> bool:
    """Remove a computed all-zero bias input (an initializer bias is the user's and stays)."""
    if len(node.input) < 3 or node.input[2] not in index.producer:
        return False
    bias = constants.value(node.input[2])
    if bias is None or np.any(bias):
        return False
    old = node.input[2]
    index.set_input(node, 2, "")
    del node.input[2:]
    index.remove_if_dead([old])
    return True


def _materialize(index: GraphIndex, constants: ConstantResolver, node: onnx.NodeProto) -> bool:
    """Replace a run-time constant chain ending in `node` by an initializer, when only plain inputs read it."""
    if len(node.output) != 1 or node.output[0] in index.graph_outputs:
        return False
    name = node.output[0]
    readers = list(index.consumers.get(name, ()))
    if not readers or any(name not in reader.input for reader in readers):
        return False  # unused, or read from inside a subgraph
    value = constants.value(name)
    if value is None:
        return False
    new_name = index.add_initializer(name, value)
    for reader in readers:
        for k, inp in enumerate(reader.input):
            if inp == name:
                index.set_input(reader, k, new_name)
    index.remove_if_dead([name])
    return True
