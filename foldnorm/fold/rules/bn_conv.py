"""BatchNormalization directly BEFORE a Conv (nothing in between), folded into the conv's input channels.

    Y = Conv(BN(X), W, b)   →   Y = Conv(X, W', b')
    W'[o, j] = W[o, j] * s[c],   b'[o] = b[o] + Σ_{j,k} W[o, j, k] * t[c],   c = (o // (O/g)) * (I/g) + j

Exact only when the conv pads nothing: zero-padding the normalized input is not zero-padding the raw input
(the pad would have to be -t/s), so a padded conv keeps its BN and the report says why.
"""

from __future__ import annotations

import onnx

from foldnorm.fold.bn_math import fold_conv_input
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal, group_of
from foldnorm.fold.rules.common import constant_weights, rewrite_plan
from foldnorm.onnxgraph.graph import attr, node_label


def conv_padding(conv: onnx.NodeProto) -> str | None:
    """How `conv` pads its input (`pads=[...]` or `auto_pad=...`), or None when it pads nothing."""
    pads = attr(conv, "pads", None) or []
    auto_pad = attr(conv, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if any(int(p) != 0 for p in pads) or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return f"pads={list(pads)}" if pads else f"auto_pad={auto_pad}"
    return None


def conv_input_plan(ctx: FoldContext, node: onnx.NodeProto, conv: onnx.NodeProto, params: ChannelParams) -> Plan:
    """Fold `params`, a map on the data input of `conv` that `node` computes, into the Conv's weight and bias
    (padding aside: the caller's check); the Conv then reads `node`'s input."""
    label = f"Conv {node_label(conv)}"
    if conv.input[0] != node.output[0] or list(conv.input).count(node.output[0]) != 1:
        raise Refusal(f"{label} reads it as something other than its data input")
    weight, bias = constant_weights(ctx, conv)
    group = group_of(conv)
    affine = params.on_axis(weight.ndim, 1, weight.shape[1] * group)
    w64, b64 = fold_conv_input(weight, bias, affine, group)
    return rewrite_plan(ctx, node, conv, (w64, weight.dtype, 0), (b64, 2), position="before")


class BatchNormConv(NeighbourRule):
    """Fold a BatchNormalization into the Conv that reads its output."""

    name = "bn-conv"
    summary = "BN -> Conv with zero padding: into the Conv's input channels and bias"
    position = "before"
    op_types = ("Conv",)
    kinds = ("batchnorm",)  # a Mul/Add before a Conv is affine-conv's

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, conv: onnx.NodeProto, params: ChannelParams) -> Plan:
        """Compute the folded Conv weights, or raise `Refusal` saying why the BN must stay."""
        padding = conv_padding(conv)
        if padding is not None:
            raise Refusal(f"Conv {node_label(conv)} that follows it pads its input ({padding}): padding the "
                          "normalized input with zeros is not padding the raw input, so the BN cannot move into "
                          "the conv")
        return conv_input_plan(ctx, bn, conv, params)
