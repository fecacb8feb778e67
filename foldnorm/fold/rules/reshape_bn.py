"""BatchNormalization over a Flatten/Reshape of a linear op's output (LeViT's `bn(linear(x).flatten(0, 1))`).

    Y = BN(reshape(A @ W [+ c]))   →   Y = reshape(A @ W' [+ c'])     W'[..., n] = W[..., n] * s[n],  c' = s * c + t

BatchNorm normalizes axis 1, so on a rank-2 input element i is in channel i mod C. A Flatten or Reshape keeps
the row-major order of the elements, so element i is column i mod N of the linear op's output (N: its last
axis). BatchNorm requires axis 1 of its input to hold its C channels; when C = N (checked against the weight by
the rule that folds into the linear op) every element therefore meets the BN channel of its own column: the BN
is a per-column map on the linear op's output, folded there by that op's rule (`matmul-bn`, `gemm-bn`) as if
it stood before the reshape. The rank 2 is proved by the op: a Flatten always gives rank 2, a Reshape when its
target shape has two entries (a constant, or a recorded or inferred rank). A Reshape after the BN (LeViT's
`reshape_as`) plays no part. Anything not proved is refused with the reason.
"""

from __future__ import annotations

import onnx

from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal
from foldnorm.fold.rules.common import after_rules, fold_into_producer
from foldnorm.onnxgraph.edits import absorb
from foldnorm.onnxgraph.graph import node_label


class ReshapeBatchNorm(NeighbourRule):
    """Fold a BatchNormalization over a rank-2 Flatten/Reshape into the linear op before the reshape."""

    name = "reshape-bn"
    summary = "MatMul/Gemm -> Flatten/Reshape to rank 2 -> BN on its columns: into the MatMul/Gemm"
    op_types = ("Flatten", "Reshape")
    kinds = ("batchnorm",)

    def accepts(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """A reshape of the output of an op another rule folds BatchNorms into."""
        return bool(after_rules(ctx, ctx.index.producer.get(neighbour.input[0]), caller=self.name))

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, reshape: onnx.NodeProto, params: ChannelParams) -> Plan:
        """A plan folding `bn` into the linear op behind `reshape`, or `Refusal` with the reason."""
        label = f"{reshape.op_type} {node_label(reshape)}"
        rank = 2 if reshape.op_type == "Flatten" else _target_rank(ctx, reshape)
        if rank is None:
            raise Refusal(f"{label} reshapes to a run-time shape whose rank cannot be proved")
        if rank != 2:
            raise Refusal(f"{label} gives rank {rank}, not 2: the BN's channel axis is not the last axis of the "
                          "op before it")
        producer = ctx.index.producer[reshape.input[0]]  # accepts() saw it
        columns = ChannelParams(params.on_axis(2, 1, params.channels), params.param_dtype, axis=-1,
                                source=params.source, strict=False)
        try:
            fold = fold_into_producer(ctx, bn, producer, columns, caller=self.name, name=bn.name)
        except Refusal as refusal:
            raise Refusal(f"not folded through {label}: {refusal.reason}") from None

        def apply() -> None:
            fold.apply(ctx, reshape)
            absorb(ctx.index, bn, reshape)

        target = fold.plan.target
        return Plan(target, apply, note=f"folded through {label} into {target.op_type} {node_label(target)}")


def _target_rank(ctx: FoldContext, reshape: onnx.NodeProto) -> int | None:
    """The rank a Reshape gives: the length of a constant target shape, else the output's proved rank."""
    target = ctx.constant(reshape.input[1]) if len(reshape.input) > 1 else None
    if target is not None and target.ndim == 1:
        return int(target.size)
    return ctx.shapes.rank(reshape.output[0])
