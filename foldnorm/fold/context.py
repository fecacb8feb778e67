"""The graph a fold works in: its index, constants, proved shapes, options, and the weight writes a fold makes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex, node_label
from foldnorm.onnxgraph.shapes import ShapeProver

if TYPE_CHECKING:  # the options module reads the rule registry, whose rules read this module
    from foldnorm.fold.options import FoldOptions
    from foldnorm.fold.rules import ChannelParams, Plan


@dataclass
class FoldContext:
    """One graph being folded: its index, constant resolver, shape prover and options."""

    index: GraphIndex
    constants: ConstantResolver
    options: FoldOptions
    #: the model whose main graph this is, for shape inference when a rank is not recorded (None: subgraph).
    model: onnx.ModelProto | None = None
    #: the version of the default ONNX domain the graph's operators follow (below 7: the old operator versions).
    opset: int = field(default_factory=onnx.defs.onnx_opset_version)
    #: sentences the last `apply()` wants in its record (e.g. a shared weight was duplicated).
    notes: list[str] = field(default_factory=list)
    #: set by the engine: the first plan of the "after" rules folding a subject into a given producer (raises
    #: `Refusal` with their reasons), for a rule that folds through nodes in between (a Q/DQ pair).
    fold_into: Callable[[onnx.NodeProto, onnx.NodeProto, ChannelParams], Plan] | None = None
    #: set by the engine: whether an "after" rule finds constant weights in a given producer to fold into.
    takes_fold: Callable[[onnx.NodeProto], bool] | None = None
    #: set by the engine: the nodes that belong to a protected normalization (by `id()`), each with its label
    protected: dict[int, str] = field(default_factory=dict)
    shapes: ShapeProver = field(init=False)

    def __post_init__(self) -> None:
        self.shapes = ShapeProver(self.index, self.constants, self.model)

    def constant(self, name: str) -> np.ndarray | None:
        """The constant value of `name`, or None."""
        return self.constants.value(name)

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
