"""BatchNormalization (or a per-channel affine) after Conv (1D/2D/3D, any group count, bias or not).

    Y = BN(Conv(X, W, b))   →   Y = Conv(X, W', b')
    W'[o] = W[o] * s[o],   b' = s * b + t         (s, t: the BN's affine map, in float64)

Output channel o of a Conv is weight row o whatever the group count, so depthwise and grouped convs fold
the same way.
"""

from __future__ import annotations

import onnx

from foldnorm.fold.bn_math import fold_bias, scale_output_channels
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan
from foldnorm.fold.rules.common import constant_weights, rewrite_plan


class ConvBatchNorm(NeighbourRule):
    """Fold a BatchNormalization into the Conv that produces its input."""

    name = "conv-bn"
    summary = "Conv -> BN: into the Conv's weight and bias"
    op_types = ("Conv",)

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, conv: onnx.NodeProto, params: ChannelParams) -> Plan:
        """Compute the folded Conv weights, or raise `Refusal` saying why the BN must stay."""
        weight, bias = constant_weights(ctx, conv)
        affine = params.on_axis(weight.ndim, 1, weight.shape[0])
        scaled = scale_output_channels(weight, affine, axis=0)  # output channel o is weight row o
        return rewrite_plan(ctx, bn, conv, (scaled, weight.dtype, 0), (fold_bias(bias, affine), 2))
