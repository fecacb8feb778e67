"""BatchNormalization (or a per-channel affine) after ConvTranspose (1D/2D/3D, any group count, bias or not).

    Y = BN(ConvTranspose(X, W, b))   →   Y = ConvTranspose(X, W', b')

The weight is `[I, O/g, k...]`: `W[i, j]` feeds output channel `(i // (I/g)) * (O/g) + j`, so the scale is
applied per group (scaling axis 1 alone is right only for g = 1). `b' = s * b + t`.
"""

from __future__ import annotations

import onnx

from foldnorm.fold.bn_math import fold_bias, fold_conv_transpose, scale_output_channels
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, group_of
from foldnorm.fold.rules.common import constant_weights, rewrite_plan


class ConvTransposeBatchNorm(NeighbourRule):
    """Fold a BatchNormalization into the ConvTranspose that produces its input."""

    name = "conv-transpose-bn"
    summary = "ConvTranspose -> BN: into per-group weight columns and the bias"
    op_types = ("ConvTranspose",)

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, convt: onnx.NodeProto, params: ChannelParams) -> Plan:
        """Compute the folded ConvTranspose weights, or raise `Refusal` saying why the BN must stay."""
        weight, bias = constant_weights(ctx, convt)
        group = group_of(convt)
        channels = weight.shape[1] * group
        affine = params.on_axis(weight.ndim, 1, channels)
        if group == 1:  # output channel j is weight column j: a per-channel scale (quantized weights keep theirs)
            scaled = scale_output_channels(weight, affine, axis=1)
            return rewrite_plan(ctx, bn, convt, (scaled, weight.dtype, 1), (fold_bias(bias, affine), 2))
        w64, b64 = fold_conv_transpose(weight, bias, affine, group)
        # Checked for under/overflow per output channel: [g, I/g, O/g, k...] viewed as [O, I/g, k...].
        per_out = w64.reshape(group, weight.shape[0] // group, weight.shape[1], -1).transpose(0, 2, 1, 3)
        return rewrite_plan(
            ctx, bn, convt, (per_out.reshape(channels, -1), weight.dtype, 0), (b64, 2),
            reshape_weight=lambda w: w.reshape(per_out.shape).transpose(0, 2, 1, 3).reshape(w64.shape),
        )
