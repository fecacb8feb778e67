"""Per-channel Mul/Add/Sub/Div with a constant, seen as the affine map the fold passes take.

    x * c → (c, 0)     x + c, c + x → (1, c)     x - c → (1, -c)     c - x → (-1, c)     x / c → (1/c, 0)

Hand-written and frozen BatchNorms and exported affine tails look like this. The constant must vary along
one axis at most (the channel axis, checked by the pass against its producer); a constant that varies along
several axes, or whose only varying axis is not the producer's channel axis, is not a per-channel map.
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.fold.bn_math import ChannelAffine
from foldnorm.fold.rules.base import ChannelParams, FoldContext, is_float

AFFINE_OPS = ("Mul", "Add", "Sub", "Div")


def affine_operand(ctx: FoldContext, node: onnx.NodeProto) -> tuple[str, np.ndarray, int] | None:
    """For a Mul/Add/Sub/Div with exactly one constant float operand: (data input, constant, its index)."""
    if node.op_type not in AFFINE_OPS or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    values = [ctx.constant(name) for name in node.input]
    if (values[0] is None) == (values[1] is None):
        return None
    k = 0 if values[0] is not None else 1
    constant = values[k]
    if constant is None or not is_float(constant) or (node.op_type == "Div" and k == 0):
        return None
    return node.input[1 - k], constant, k


def affine_params(node: onnx.NodeProto, constant: np.ndarray, const_index: int) -> ChannelParams | str:
    """The per-channel map of `node` whose constant operand is `constant` (input `const_index`)."""
    varying = [i for i, d in enumerate(constant.shape) if d != 1]
    if len(varying) > 1:
        return f"its constant of shape {list(constant.shape)} varies along several axes, not one channel axis"
    c = np.asarray(constant, dtype=np.float64).reshape(-1)
    one, zero = np.ones_like(c), np.zeros_like(c)
    op = node.op_type
    with np.errstate(divide="ignore", invalid="ignore"):
        scale, shift = {
            "Mul": (c, zero),
            "Add": (one, c),
            "Sub": (one, -c) if const_index == 1 else (-one, c),
            "Div": (1.0 / c, zero),
        }[op]
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        return "its constant gives a scale or shift that is not finite (a division by zero?)"
    axis = varying[0] - constant.ndim if varying else None
    return ChannelParams(ChannelAffine(scale, shift), constant.dtype, axis=axis, const_rank=constant.ndim,
                         source=node.name, strict=False)
