"""BatchNormalization (or a per-channel affine) after MatMul, optionally followed by an Add of a constant bias.

    Y = BN(A @ B [+ c])   →   Y = A @ B' + c'        B'[..., n] = B[..., n] * s[n],   c' = s * c + t

Only when the BN's channel axis is provably the LAST axis of the MatMul output: BatchNormalization
normalizes axis 1, so the output must be of rank 2 (a bias-free `nn.Linear` on [N, K] input). A rank-3
MatMul followed by a BN over axis 1 is left alone even when the lengths happen to agree. Without a bias
Add, a new Add (named after the BN) carries `t`; an affine without shift (a Mul) needs none.
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.fold.bn_math import emit, fold_bias, scale_output_channels
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal, is_float
from foldnorm.fold.rules.common import constant_weights, require_numpy_broadcasting, weight_writes
from foldnorm.onnxgraph.edits import absorb, append_bias
from foldnorm.onnxgraph.graph import is_onnx_op, legacy_broadcast, node_label


def _bias_add_parts(ctx: FoldContext, add: onnx.NodeProto) -> tuple[onnx.NodeProto, int] | None:
    """For `Add(MatMul(A, B), c)` with a constant `c`: the MatMul and the index of `c`; else None."""
    if not is_onnx_op(add, "Add") or len(add.input) != 2 or legacy_broadcast(add):
        return None
    for k in (0, 1):
        matmul = ctx.index.producer.get(add.input[k])
        if matmul is not None and is_onnx_op(matmul, "MatMul") and ctx.constant(add.input[1 - k]) is not None:
            return matmul, 1 - k
    return None


class MatMulBatchNorm(NeighbourRule):
    """Fold a BatchNormalization into the MatMul (and its bias Add) that produces its input."""

    name = "matmul-bn"
    summary = "MatMul (+ constant bias Add) -> BN, output provably rank 2: into B and the bias"
    op_types = ("MatMul", "Add")

    def accepts(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """A MatMul, or an Add of a constant to a MatMul's output."""
        return is_onnx_op(neighbour, "MatMul") or _bias_add_parts(ctx, neighbour) is not None

    def has_fixed_weights(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """Whether the MatMul (for its bias Add: the MatMul it adds to) has a constant weight."""
        parts = _bias_add_parts(ctx, neighbour)
        return super().has_fixed_weights(ctx, parts[0] if parts is not None else neighbour)

    def _rank(self, ctx: FoldContext, matmul: onnx.NodeProto, weight: np.ndarray) -> int | None:
        rank = ctx.shapes.rank(matmul.output[0])
        if rank is not None:
            return rank
        a_rank = ctx.shapes.rank(matmul.input[0])
        if a_rank is None:
            return None
        return weight.ndim - 1 if a_rank == 1 else max(a_rank, weight.ndim)

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, neighbour: onnx.NodeProto, params: ChannelParams) -> Plan:
        """Compute the folded MatMul weight and bias, or raise `Refusal` saying why the BN must stay."""
        add: onnx.NodeProto | None = None
        bias_index = 0
        matmul = neighbour
        if neighbour.op_type == "Add":
            parts = _bias_add_parts(ctx, neighbour)
            if parts is None:
                raise Refusal(f"Add {node_label(neighbour)} is not a MatMul plus a constant bias")
            matmul, bias_index = parts
            add = neighbour
            if ctx.index.uses(matmul.output[0]) != 1:
                raise Refusal(f"the output of MatMul {node_label(matmul)} is also read elsewhere")
        weight, _ = constant_weights(ctx, matmul)
        if weight.ndim < 2:
            raise Refusal(f"the weight of MatMul {node_label(matmul)} has rank {weight.ndim}; "
                          "its output has no column axis")
        channels = weight.shape[-1]
        rank = self._rank(ctx, matmul, weight)
        bias = ctx.constant(add.input[bias_index]) if add is not None else None
        if rank is not None and bias is not None:
            rank = max(rank, bias.ndim)
        if bias is not None and (not is_float(bias) or any(d != 1 for d in bias.shape[:-1])):
            raise Refusal(f"the bias of Add {node_label(neighbour)} is not a per-column constant")
        if bias is not None and bias.ndim and bias.shape[-1] not in (1, channels):
            raise Refusal(f"the bias of Add {node_label(neighbour)} widens the {channels} output column(s) of "
                          f"MatMul {node_label(matmul)} to {bias.shape[-1]} by broadcasting")
        affine = params.on_axis(rank, -1, channels)
        scaled = scale_output_channels(weight, affine, axis=weight.ndim - 1)
        write_weight, note, quantization = weight_writes(ctx, matmul, (scaled, weight.dtype, weight.ndim - 1))
        b64 = fold_bias(bias, affine)
        needs_bias = add is not None or bool(np.any(affine.shift != 0))
        if add is None and needs_bias:
            require_numpy_broadcasting(ctx, f"a bias Add after MatMul {node_label(matmul)}")
        new_b, problem = emit(b64, weight.dtype, channel_axis=b64.ndim - 1)
        if new_b is None:
            raise Refusal(f"not folded into MatMul {node_label(matmul)}: bias {problem}")

        def apply() -> None:
            write_weight()
            if add is not None:
                ctx.set_param(add, bias_index, np.ascontiguousarray(new_b), "bias")
                absorb(ctx.index, bn, add)
            elif needs_bias:
                append_bias(ctx.index, bn, matmul, np.ascontiguousarray(new_b))
            else:
                absorb(ctx.index, bn, matmul)

        return Plan(add if add is not None else matmul, apply, note=note, quantization=quantization)
