"""BatchNormalization after Conv (1D/2D/3D, any group count, with or without bias).

    Y = BN(Conv(X, W, b))   →   Y = Conv(X, W', b')
    W'[o] = W[o] * s[o],   b' = s * b + t         (s, t: the BN's affine map, in float64)

Output channel o of a Conv is weight row o whatever the group count, so depthwise and grouped convs fold
the same way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx

from foldnorm.bn_math import emit, fold_conv
from foldnorm.graph import node_label
from foldnorm.passes.base import BatchNormParams, FoldContext, Plan
from foldnorm.passes.common import constant_weights


class ConvBatchNorm:
    """Fold a BatchNormalization into the Conv that produces its input."""

    name = "conv-bn"
    position: Literal["after", "before"] = "after"
    op_types: tuple[str, ...] = ("Conv",)

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, conv: onnx.NodeProto,
              params: BatchNormParams) -> Plan | str:
        """Compute the folded Conv weights, or say why the BN must stay."""
        loaded = constant_weights(ctx, conv, params.channels, out_axis=0)
        if isinstance(loaded, str):
            return loaded
        weight, bias = loaded
        w64, b64 = fold_conv(weight, bias, params.affine)
        new_w, problem = emit(w64, weight.dtype, channel_axis=0)
        if new_w is None:
            return f"not folded into {node_label(conv)}: {problem}"
        new_b, problem = emit(b64, weight.dtype)
        if new_b is None:
            return f"not folded into {node_label(conv)}: bias {problem}"

        def apply() -> None:
            ctx.set_param(conv, 1, np.ascontiguousarray(new_w), "weight")
            ctx.set_param(conv, 2, np.ascontiguousarray(new_b), "bias")
            ctx.absorb(bn, conv)

        return Plan(conv, apply)
