"""The pass contract and the shared context passes work in.

A BatchNorm pass is asked `check(ctx, bn, neighbour)`: it returns a `Plan` (everything computed, nothing
changed yet) or a reason sentence for leaving the BN alone. `rewrite(ctx, plan)` then applies the plan.
Refusing is not an error: the engine records a `skipped` entry with the sentence.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import onnx

from foldnorm.bn_math import ChannelAffine
from foldnorm.constants import ConstantResolver
from foldnorm.graph import GraphIndex, node_label


@dataclass(frozen=True)
class FoldOptions:
    """User-facing switches of the fold engine."""

    standalone_bn: Literal["keep", "affine"] = "keep"


@dataclass(frozen=True)
class BatchNormParams:
    """A BatchNorm node's parameters, resolved to constants."""

    affine: ChannelAffine
    param_dtype: np.dtype

    @property
    def channels(self) -> int:
        """Channel count of the BN."""
        return self.affine.channels


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

    def constant(self, name: str) -> np.ndarray | None:
        """The constant value of `name`, or None."""
        return self.constants.value(name)

    def set_param(self, node: onnx.NodeProto, input_index: int, array: np.ndarray, suffix: str) -> str:
        """Give `node` input `input_index` the constant `array`.

        A local initializer read only by `node` is overwritten in place; anything shared, routed through
        Identity/Constant nodes or from an enclosing scope is left alone and a new initializer is added.
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
            index.remove_if_dead([old])
        return name

    def absorb(self, bn: onnx.NodeProto, producer: onnx.NodeProto) -> None:
        """Remove `bn`, letting `producer` write the BN's output name (so downstream names never change)."""
        index = self.index
        old_out = producer.output[0]
        bn_out = bn.output[0]
        params = list(bn.input[1:])
        index.remove_node(bn)
        index.set_output(producer, 0, bn_out)
        index.remove_if_dead([old_out, *params])


class BatchNormPass(Protocol):
    """Folds a BatchNorm into one neighbouring node."""

    name: str
    #: "after": the neighbour produces the BN's input; "before": the neighbour consumes the BN's output.
    position: Literal["after", "before"]
    #: op types of the neighbour this pass handles.
    op_types: tuple[str, ...]

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, neighbour: onnx.NodeProto,
              params: BatchNormParams) -> Plan | str:
        """Return a plan for folding `bn` into `neighbour`, or a sentence saying why not."""
        ...
