"""Checks shared by the passes that fold into a producer's weights."""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.errors import InvalidModelError
from foldnorm.graph import node_label
from foldnorm.passes.base import FoldContext


def constant_weights(
    ctx: FoldContext, node: onnx.NodeProto, channels: int, out_axis: int, out_channels: int | None = None
) -> tuple[np.ndarray, np.ndarray | None] | str:
    """Resolve a producer's weight (input 1) and optional bias (input 2) to constants.

    Returns `(weight, bias_or_None)`, or a reason sentence when either is not a constant. A channel count
    that disagrees with the BN is an invalid model, not a skip.
    """
    label = node_label(node)
    weight_name = node.input[1]
    weight = ctx.constant(weight_name)
    if weight is None:
        where = "a graph input" if ctx.index.is_graph_input(weight_name) else "computed at run time"
        return f"the weight {weight_name!r} of {node.op_type} {label} is {where}, not a constant"
    if not np.issubdtype(weight.dtype, np.floating) and weight.dtype.name != "bfloat16":
        return f"the weight of {node.op_type} {label} is {weight.dtype.name}, not a float type"
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = ctx.constant(node.input[2])
        if bias is None:
            return f"the bias {node.input[2]!r} of {node.op_type} {label} is not a constant"
    found = out_channels if out_channels is not None else weight.shape[out_axis]
    if found != channels:
        raise InvalidModelError(
            f"{node.op_type} {label} has {found} output channels but the BatchNormalization after it has "
            f"{channels} parameters; fix the model (re-export it) before folding."
        )
    return weight, bias
