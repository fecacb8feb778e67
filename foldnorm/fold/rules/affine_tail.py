"""A Mul/Add/Sub/Div by a constant after a linear op, seen as the per-channel affine map the "after" rules fold.

    x * c → (c, 0)     x + c, c + x → (1, c)     x - c → (1, -c)     c - x → (-1, c)     x / c → (1/c, 0)

Hand-written and frozen BatchNorms and exported affine tails look like this. The node is a candidate only
when it sits alone after an op with constant weights that an "after" rule folds into, or (else) when an op
with constant weights that a "before" rule folds into reads it alone (`affine-conv`); attention's
`MatMul(Q, K) / sqrt(d)` or the pieces of a written-out GELU are neither, and get no record. An Add right after
a MatMul is that MatMul's bias, not a tail. The constant must vary along one axis at most (the channel axis,
checked by the rule that folds it); a constant that varies along several axes is not a per-channel map.
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.fold.bn_math import ChannelAffine
from foldnorm.fold.context import FoldContext
from foldnorm.fold.quantized import producer_through_pair
from foldnorm.fold.rules.base import ChannelParams, Refusal, SubjectRule, is_float
from foldnorm.onnxgraph.graph import is_onnx_op, legacy_broadcast


def _constant_operand(ctx: FoldContext, node: onnx.NodeProto) -> tuple[str, np.ndarray, int] | None:
    """For a Mul/Add/Sub/Div with exactly one constant float operand: (data input, constant, its index)."""
    if len(node.input) != 2:
        return None
    values = [ctx.constant(name) for name in node.input]
    if (values[0] is None) == (values[1] is None):
        return None
    k = 0 if values[0] is not None else 1
    constant = values[k]
    if constant is None or not is_float(constant) or (node.op_type == "Div" and k == 0):
        return None
    return node.input[1 - k], constant, k


class AffineTail(SubjectRule):
    """A per-channel Mul/Add/Sub/Div by a constant after a linear op, folded like a BatchNorm."""

    name = "affine-tail"
    summary = "linear op -> Mul/Add/Sub/Div by a per-channel constant: folded as a BN would be"
    op_types = ("Mul", "Add", "Sub", "Div")
    kind = "affine"

    def operand(self, ctx: FoldContext, node: onnx.NodeProto) -> str | None:
        """The data input of a Mul/Add/Sub/Div by one constant float, unless it is a MatMul's bias Add/Sub."""
        found = _constant_operand(ctx, node)
        if found is None:
            return None
        producer = producer_through_pair(ctx, found[0])  # in a QDQ model: op -> Q -> DQ -> node
        if producer is not None and node.op_type in ("Add", "Sub") and is_onnx_op(producer, "MatMul"):
            return None  # an Add right after a MatMul is that MatMul's bias, not a tail to fold
        return found[0]

    def params(self, ctx: FoldContext, node: onnx.NodeProto) -> ChannelParams:
        """The per-channel map of `node`; raises `Refusal` when its constant is not per-channel."""
        found = _constant_operand(ctx, node)
        assert found is not None, "params() is asked only for a node operand() accepted"
        if legacy_broadcast(node):
            raise Refusal(f"it broadcasts by its broadcast/axis attributes ({node.op_type} of opset {ctx.opset}), "
                          "not by numpy's rules")
        _, constant, const_index = found
        varying = [i for i, d in enumerate(constant.shape) if d != 1]
        if len(varying) > 1:
            raise Refusal(f"its constant of shape {list(constant.shape)} varies along several axes, "
                          "not one channel axis")
        c = np.asarray(constant, dtype=np.float64).reshape(-1)
        one, zero = np.ones_like(c), np.zeros_like(c)
        with np.errstate(divide="ignore", invalid="ignore"):
            scale, shift = {
                "Mul": (c, zero),
                "Add": (one, c),
                "Sub": (one, -c) if const_index == 1 else (-one, c),
                "Div": (1.0 / c, zero),
            }[node.op_type]
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
            raise Refusal("its constant gives a scale or shift that is not finite (a division by zero?)")
        axis = varying[0] - constant.ndim if varying else None
        return ChannelParams(ChannelAffine(scale, shift), constant.dtype, axis=axis, const_rank=constant.ndim,
                             source=node.name, strict=False)
