"""BatchNormalization right before a linear layer (RepViT's and EfficientViT's `BatchNorm1d → Linear` heads).

    Y = alpha * BN(X) B' + beta * C   →   Y = alpha * X B'' + C''
    B''[k, :] = s[k] * B'[k, :],   C'' = beta * C + alpha * t B'        (B': the weight as [K, N])

A linear layer pads nothing, so the fold is exact. The BN's channel axis must be the layer's K axis: a Gemm
(transA = 0) reads a rank-2 input, a MatMul's input must be proved rank 2 (the MatMul then becomes a Gemm that
carries the new bias). Through a Flatten(axis = 1) of a [N, C, ...] input the K = C * S inputs of the layer
are channel-major (S = K / C, the spatial size the layer's weight implies), so row k takes channel k // S.
A GlobalAveragePool between the BN and the Flatten (StarNet's, NextViT's, ConvMixer's `norm -> pool -> head`)
commutes with the BN, a per-channel affine map (mean(s x + t) = s mean(x) + t), and leaves S = 1.
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.fold.bn_math import ChannelAffine, fold_conv_input
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal
from foldnorm.fold.rules.common import constant_weights, gemm_takes_bias, rewrite_plan
from foldnorm.onnxgraph.graph import attr, is_onnx_op, node_label


def _path(ctx: FoldContext, neighbour: onnx.NodeProto) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The nodes from the BN's reader `neighbour` to the Gemm/MatMul (none, a Flatten, or a GlobalAveragePool and
    a Flatten), each the only reader of the one before, and that Gemm/MatMul."""
    between: list[onnx.NodeProto] = []
    node: onnx.NodeProto | None = neighbour
    for op in ("GlobalAveragePool", "Flatten"):
        if node is not None and is_onnx_op(node, op):
            between.append(node)
            node = ctx.index.only_consumer(node.output[0])
    if node is None or not is_onnx_op(node, "Gemm", "MatMul") or (between and not is_onnx_op(between[-1], "Flatten")):
        return None
    return between, node


class BatchNormLinear(NeighbourRule):
    """Fold a BatchNormalization into the Gemm/MatMul that reads its output (through a Flatten, or a
    GlobalAveragePool and a Flatten, or directly)."""

    name = "bn-linear"
    summary = "BN -> (GlobalAveragePool ->) (Flatten ->) Gemm/MatMul: into the weight's input rows and the bias"
    position = "before"
    op_types = ("Gemm", "MatMul", "Flatten", "GlobalAveragePool")
    kinds = ("batchnorm",)

    def accepts(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """A Gemm or MatMul, or a Flatten (after a GlobalAveragePool or not) read only by one."""
        return _path(ctx, neighbour) is not None

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, neighbour: onnx.NodeProto, params: ChannelParams) -> Plan:
        """A plan folding `bn` into the weight and bias of the linear layer, or `Refusal` with the reason."""
        found = _path(ctx, neighbour)
        assert found is not None, "check() is asked only for a neighbour accepts() took"
        between, linear = found
        flatten = between[-1] if between else None
        label = f"{linear.op_type} {node_label(linear)}"
        fed = flatten.output[0] if flatten is not None else bn.output[0]
        if linear.input[0] != fed or list(linear.input).count(fed) != 1:
            raise Refusal(f"{label} reads it as something other than its data input")
        gemm = linear.op_type == "Gemm"
        if gemm and attr(linear, "transA", 0):
            raise Refusal(f"{label} transposes its input (transA=1): the BN's channels are its rows, not its K")
        weight, bias = constant_weights(ctx, linear)
        if weight.ndim != 2:
            raise Refusal(f"the weight of {label} has rank {weight.ndim}, not 2")
        by_row = gemm and bool(attr(linear, "transB", 0))  # the weight is [N, K], else [K, N]
        w_nk = weight if by_row else weight.T
        if flatten is not None:
            affine = _through_flatten(ctx, bn, flatten, params, w_nk.shape[1], pooled=len(between) == 2)
        else:
            if not gemm and ctx.shapes.rank(fed) != 2:
                raise Refusal(f"the input of {label} is not provably rank 2: the BN's channel axis may not be K")
            affine = params.on_axis(2, 1, w_nk.shape[1])
        w64, shift = fold_conv_input(w_nk, None, affine, 1)  # a [N, K] weight is a 1x1 conv's
        alpha, beta = float(attr(linear, "alpha", 1.0)), float(attr(linear, "beta", 1.0))
        b64 = alpha * shift if bias is None or beta == 0 else beta * np.asarray(bias, np.float64) + alpha * shift
        new_w = w64 if by_row else w64.T

        def finish() -> None:
            if not gemm:
                linear.op_type = "Gemm"  # MatMul of a rank-2 input with a [K, N] weight, now with a bias
            gemm_takes_bias(ctx, linear)

        note = f"folded into {label}" + ("" if gemm else " (now a Gemm, which carries the BN's shift as its bias)")
        plan = rewrite_plan(ctx, bn, linear, (new_w, weight.dtype, 0 if by_row else 1), (b64, 2),
                            position="before", also=finish, reader=between[0] if between else None)
        plan.note = note
        return plan


def _through_flatten(ctx: FoldContext, bn: onnx.NodeProto, flatten: onnx.NodeProto, params: ChannelParams,
                     k: int, *, pooled: bool) -> ChannelAffine:
    """The BN's map on the K inputs of the layer after `flatten`: channel c covers rows c*S ... c*S + S-1 (S = 1
    when a GlobalAveragePool came first)."""
    label = f"Flatten {node_label(flatten)}"
    rank = ctx.shapes.rank(bn.output[0])
    axis = int(attr(flatten, "axis", 1))
    if axis < 0 and rank is not None:
        axis += rank
    if axis != 1:
        raise Refusal(f"{label} flattens from axis {attr(flatten, 'axis', 1)}, not from the BN's channel axis 1")
    channels = params.channels
    if k % channels:
        raise Refusal(f"the {k} inputs of the layer after {label} are no whole number of the BN's "
                      f"{channels} channels")
    if pooled and k != channels:
        raise Refusal(f"the layer after {label} has {k} inputs, not the BN's {channels} pooled channels")
    affine = params.on_axis(rank, 1, channels)
    spatial = k // channels
    return ChannelAffine(np.repeat(affine.scale, spatial), np.repeat(affine.shift, spatial))
