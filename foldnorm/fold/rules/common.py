"""Checks and rewrites shared by the passes that fold into a neighbour's weights."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from foldnorm.errors import InvalidModelError
from foldnorm.fold.bn_math import Scaled, batchnorm_affine, emit
from foldnorm.fold.rules.base import ChannelParams, FoldContext, Plan, is_float
from foldnorm.onnxgraph.graph import attr, node_label


def batchnorm_params(ctx: FoldContext, bn: onnx.NodeProto) -> ChannelParams | str:
    """A BatchNormalization's inference map resolved to constants, or why it has none.

    Parameters of different lengths make the model invalid (`InvalidModelError`), not a skip.
    """
    if attr(bn, "training_mode", 0):
        return "training_mode=1: the node computes batch statistics"
    if attr(bn, "spatial", 1) == 0:
        return "spatial=0 (BatchNormalization-7 and older): per-element statistics are not supported"
    if len([o for o in bn.output if o]) > 1:
        return "the node also outputs running statistics (training graph)"
    values = []
    for role, name in zip(("scale", "bias", "mean", "var"), bn.input[1:5]):
        value = ctx.constant(name)
        if value is None:
            return f"its {role} {name!r} is {_origin(ctx, name)}, not a constant"
        values.append(value)
    sizes = {v.size for v in values}
    if len(sizes) != 1:
        raise InvalidModelError(
            f"BatchNormalization {node_label(bn)} has parameters of different lengths "
            f"{[v.size for v in values]}; fix the model (re-export it) before folding."
        )
    eps = float(attr(bn, "epsilon", 1e-5))
    affine = batchnorm_affine(values[0], values[1], values[2], values[3], eps)
    if not (np.all(np.isfinite(affine.scale)) and np.all(np.isfinite(affine.shift))):
        return "its scale or shift is not finite (a zero variance with eps = 0?)"
    return ChannelParams(affine, values[0].dtype, source=node_label(bn))


def _origin(ctx: FoldContext, name: str) -> str:
    """Where a value that is not a constant comes from, for a reason sentence."""
    return ctx.constants.reason(name) or ("a graph input" if ctx.index.is_graph_input(name) else
                                          "computed at run time")


def constant_weights(
    ctx: FoldContext, node: onnx.NodeProto, bias_index: int = 2
) -> tuple[np.ndarray, np.ndarray | None] | str:
    """Resolve a neighbour's weight (input 1) and optional bias (input `bias_index`) to constants.

    Returns `(weight, bias_or_None)`, or a reason sentence when either is not a constant.
    """
    label = node_label(node)
    if len(node.input) < 2 or not node.input[1]:
        return f"{node.op_type} {label} has no weight input"
    weight_name = node.input[1]
    weight = ctx.constant(weight_name)
    if weight is None:
        return f"the weight {weight_name!r} of {node.op_type} {label} is {_origin(ctx, weight_name)}, not a constant"
    if not is_float(weight):
        return f"the weight of {node.op_type} {label} is {weight.dtype.name}, not a float type"
    bias = None
    if len(node.input) > bias_index and node.input[bias_index]:
        bias = ctx.constant(node.input[bias_index])
        if bias is None:
            return (f"the bias {node.input[bias_index]!r} of {node.op_type} {label} is "
                    f"{_origin(ctx, node.input[bias_index])}, not a constant")
    return weight, bias


def rewrite_plan(
    ctx: FoldContext,
    node: onnx.NodeProto,
    target: onnx.NodeProto,
    weight: tuple[np.ndarray | Scaled, np.dtype, int],
    bias: tuple[np.ndarray, int],
    position: str = "after",
    reshape_weight: Callable[[np.ndarray], np.ndarray] | None = None,
    also: Callable[[], None] | None = None,
) -> Plan | str:
    """Emit folded `(w64, dtype, channel_axis)` and `(b64, bias_input_index)` into `target`, removing `node`.

    Both are rounded once to the target's weight dtype; a value that would overflow or underflow refuses
    the fold with the reason. `position="after"`: `target` produces `node`'s input (it takes over node's
    output name); `"before"`: `target` consumes node's output (it reads node's input instead).
    `reshape_weight` maps the checked layout of `w64` back to the weight's own layout; `also` runs last
    (e.g. an attribute change).
    """
    w64, dtype, axis = weight
    b64, bias_index = bias
    label = node_label(target)
    new_w, problem = emit(w64, dtype, channel_axis=axis)
    if new_w is None:
        return f"not folded into {target.op_type} {label}: {problem}"
    if reshape_weight is not None:
        new_w = reshape_weight(new_w)
    new_b, problem = emit(b64, dtype, channel_axis=b64.ndim - 1 if b64.ndim else 0)
    if new_b is None:
        return f"not folded into {target.op_type} {label}: bias {problem}"

    def apply() -> None:
        # The bias first: a dynamo `Expand(Shape(W))` zero bias then stops reading W before W is replaced.
        ctx.set_param(target, bias_index, np.ascontiguousarray(new_b), "bias")
        ctx.set_param(target, 1, np.ascontiguousarray(new_w), "weight")
        if position == "after":
            ctx.absorb(node, target)
        else:
            ctx.bypass(node, target)
        if also is not None:
            also()

    return Plan(target, apply)
