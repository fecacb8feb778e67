"""BatchNormalization (or a per-channel affine) after Gemm, any transA/transB/alpha/beta and bias shape.

    Y = BN(alpha * A' B' + beta * C)   →   Y = alpha * A' B'' + 1 * C''
    B''[:, n] = B'[:, n] * s[n]   (B itself is scaled along axis 0 when transB=1, axis 1 otherwise)
    C'' = beta * s * C + t        (C: absent → t as a new [N] bias; scalar, [N], [1,N], [M,1] or [M,N])

`beta` becomes 1, so a C that was ignored (beta = 0) stays ignored.
"""

from __future__ import annotations

import onnx

from foldnorm.fold.bn_math import fold_bias, scale_output_channels
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal
from foldnorm.fold.rules.common import constant_weights, gemm_takes_bias, rewrite_plan
from foldnorm.onnxgraph.graph import attr


class GemmBatchNorm(NeighbourRule):
    """Fold a BatchNormalization into the Gemm that produces its input."""

    name = "gemm-bn"
    summary = "Gemm -> BN: into B and C (beta becomes 1)"
    op_types = ("Gemm",)

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, gemm: onnx.NodeProto, params: ChannelParams) -> Plan:
        """Compute the folded Gemm weight and bias, or raise `Refusal` saying why the BN must stay."""
        weight, bias = constant_weights(ctx, gemm)
        if weight.ndim != 2:
            raise Refusal(f"the Gemm weight has rank {weight.ndim}, not 2")
        axis = 0 if attr(gemm, "transB", 0) else 1
        channels = weight.shape[axis]
        affine = params.on_axis(2, 1, channels)
        beta = float(attr(gemm, "beta", 1.0))
        scaled = scale_output_channels(weight, affine, axis=axis)
        b64 = fold_bias(bias if beta != 0 else None, affine, beta)
        return rewrite_plan(ctx, bn, gemm, (scaled, weight.dtype, axis), (b64, 2),
                            also=lambda: gemm_takes_bias(ctx, gemm))
