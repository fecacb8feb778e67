"""BatchNormalization after a Concat on the channel axis (MixNet's mixed depthwise convs), split by input.

    Y = BN(Concat(P_1, ..., P_k, axis=1))   →   Y = Concat(P'_1, ..., P'_k, axis=1)

Concat input j holds BN channels [o_j, o_j + c_j), c_j being its length on axis 1 (recorded or inferred). That
slice of the BN is a BN of its own on input j, folded into the op producing it by the rule for that op
(`conv-bn`, `gemm-bn`, ...) exactly as if it stood between that op and the Concat. All or nothing: when one
slice cannot fold (its producer is not linear or is read elsewhere, its length is unknown ...) the BN stays
and the reason names the slice.
"""

from __future__ import annotations

import onnx

from foldnorm.fold.bn_math import ChannelAffine
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal
from foldnorm.fold.rules.common import ProducerFold, after_rules, fold_into_producer
from foldnorm.onnxgraph.edits import absorb
from foldnorm.onnxgraph.graph import attr, node_label


class ConcatBatchNorm(NeighbourRule):
    """Fold a BatchNormalization after a channel Concat into the producers of the Concat's inputs."""

    name = "concat-bn"
    summary = "Concat on the channel axis -> BN: each slice of channels into the producer of its input"
    op_types = ("Concat",)
    kinds = ("batchnorm",)

    def accepts(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """A Concat with at least one input from an op another rule folds BatchNorms into."""
        producer = ctx.index.producer.get
        return any(after_rules(ctx, producer(name), caller=self.name) for name in neighbour.input)

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, concat: onnx.NodeProto, params: ChannelParams) -> Plan:
        """A plan folding every slice of `bn` into its producer, or `Refusal` with the reason."""
        label = f"Concat {node_label(concat)}"
        rank = ctx.shapes.rank(concat.output[0])
        axis = int(attr(concat, "axis", 1))
        if axis < 0 and rank is None:
            raise Refusal(f"{label} concatenates along axis {axis} of a tensor whose rank cannot be proved")
        if rank is not None:
            axis %= rank
        if axis != 1:
            raise Refusal(f"{label} concatenates along axis {axis}, not the BN's channel axis 1")
        affine = params.on_axis(rank, 1, params.channels)
        sizes: list[int] = []
        for j, name in enumerate(concat.input):
            size = ctx.shapes.dim(name, 1)
            if size is None:
                raise Refusal(f"the channel count of input {j} of {label} cannot be proved")
            sizes.append(size)
        if sum(sizes) != params.channels:
            raise Refusal(f"the inputs of {label} have {sum(sizes)} channels, the BN {params.channels}")
        folds: list[ProducerFold] = []
        start = 0
        for j, (name, size) in enumerate(zip(concat.input, sizes)):
            end = start + size
            part = ChannelParams(ChannelAffine(affine.scale[start:end], affine.shift[start:end]),
                                 params.param_dtype, source=params.source)
            where = f"channels {start}-{end - 1} (input {j} of {label})"
            producer = ctx.index.producer.get(name)
            if producer is None:
                raise Refusal(f"{where} come from a graph input")
            try:
                folds.append(fold_into_producer(ctx, bn, producer, part, caller=self.name,
                                                name=f"{bn.name}[{start}:{end}]" if bn.name else ""))
            except Refusal as refusal:
                raise Refusal(f"{where} cannot fold: {refusal.reason}") from None
            start = end

        def apply() -> None:
            for fold in folds:
                fold.apply(ctx, concat)
            absorb(ctx.index, bn, concat)

        targets = ", ".join(f"{f.plan.target.op_type} {node_label(f.plan.target)}" for f in folds)
        return Plan(concat, apply, note=f"split by {label} into {targets}")
