"""A per-channel Mul/Add/Sub/Div by a constant right before a Conv, folded like a BN there (bn-conv's maths).

    Y = Conv(X * s + t, W, b)   →   Y = Conv(X, W', b')     W' scales input channel c by s[c]; b' adds W's
                                                             response to t

A chain of such nodes (onnxscript's `Conv(x * scale + offset)`) is composed into one map first and folds
at once; the first node of the chain is the subject, the rest goes with it. The Conv must pad nothing when
there is a shift t (zero-padding X * s + t is not zero-padding X); a scale alone (a written-out GELU's last
`* 0.5`, an input's `/ 255`) commutes with zero padding and folds into any Conv. Unlike a BatchNorm, a
constant broadcasts: the fold needs X to have the Conv's rank and its input-channel count on axis 1 (recorded
or inferred), so that no constant widens X.

Not a candidate (no record): a chain whose X is the product of two computed tensors, the end of a written-out
activation `x * f(x)` (GELU's `x * (1 + erf(x / sqrt 2)) * 0.5`, SiLU, Mish). Folding its constant would save
one element-wise op but break the runtime's own activation fusion: on timm's FastViT-T8 (ONNX Runtime, all
optimizations, 1 thread) folding GELU's `* 0.5` into the next Conv made the model 18% slower (4.69 vs 3.94 ms).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.affine_tail import AffineTail
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal, group_of
from foldnorm.fold.rules.bn_conv import conv_input_plan, conv_padding
from foldnorm.onnxgraph.graph import is_onnx_op, node_label

_AFFINE = ("Mul", "Add", "Sub", "Div")
_LONGEST = 16  # nodes in a chain


def _ends_activation(ctx: FoldContext, name: str) -> bool:
    """Whether the chain of constant nodes that computes `name` starts at a product of two computed tensors."""
    for _ in range(_LONGEST + 1):
        producer = ctx.index.producer.get(name)
        if producer is None:
            return False
        operand = AffineTail().operand(ctx, producer) if is_onnx_op(producer, *_AFFINE) else None
        if operand is None:
            return is_onnx_op(producer, "Mul") and all(ctx.constant(i) is None for i in producer.input)
        name = operand
    return False


def _chain(ctx: FoldContext, node: onnx.NodeProto,
           reads: str | None = None) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """From `node` on: the per-channel constant nodes each read only by the next (the first reading `reads` when
    given), and the Conv they lead to."""
    links: list[onnx.NodeProto] = []
    while is_onnx_op(node, *_AFFINE) and len(links) < _LONGEST:
        operand = AffineTail().operand(ctx, node)
        expected = links[-1].output[0] if links else reads
        if operand is None or (expected is not None and operand != expected):
            return None
        links.append(node)
        reader = ctx.index.only_consumer(node.output[0])
        if reader is None:
            return None
        node = reader
    return (links, node) if is_onnx_op(node, "Conv") else None


class AffineConv(NeighbourRule):
    """Fold a per-channel Mul/Add/Sub/Div (and the ones after it) into the Conv it leads to."""

    name = "affine-conv"
    summary = "Mul/Add/Sub/Div by per-channel constants -> Conv with zero padding: into its input channels"
    position = "before"
    op_types = ("Conv", *_AFFINE)
    kinds = ("affine",)

    def accepts(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """A Conv, or a per-channel constant node from which such nodes lead to a Conv, that a written-out
        activation does not feed."""
        data = neighbour.input[0] if is_onnx_op(neighbour, "Conv") else AffineTail().operand(ctx, neighbour)
        return _chain(ctx, neighbour) is not None and data is not None and not _ends_activation(ctx, data)

    def has_fixed_weights(self, ctx: FoldContext, neighbour: onnx.NodeProto) -> bool:
        """Whether the Conv the chain leads to has a constant weight."""
        found = _chain(ctx, neighbour)
        return found is not None and super().has_fixed_weights(ctx, found[1])

    def check(self, ctx: FoldContext, node: onnx.NodeProto, neighbour: onnx.NodeProto, params: ChannelParams) -> Plan:
        """A plan folding `node` and the chain after it into the Conv, or `Refusal` with the reason."""
        found = _chain(ctx, neighbour, reads=node.output[0])
        x = AffineTail().operand(ctx, node)
        assert found is not None and x is not None, "asked only for a subject's only reader that accepts() took"
        links, conv = found
        label = f"Conv {node_label(conv)}"
        weight = ctx.constant(conv.input[1])
        if weight is None or weight.ndim < 3:
            raise Refusal(f"{label} has no constant weight")
        channels = weight.shape[1] * group_of(conv)
        rank = ctx.shapes.rank(x)
        if rank != weight.ndim or ctx.shapes.dim(x, 1) != channels:
            raise Refusal(f"its input is not provably of {label}'s rank {weight.ndim} with its {channels} input "
                          "channels on axis 1, so the constant may widen it by broadcasting")
        affine = params.on_axis(rank, 1, channels)
        for link in links:
            try:
                affine = affine.then(AffineTail().params(ctx, link).on_axis(rank, 1, channels))
            except Refusal as refusal:
                raise Refusal(f"{link.op_type} {node_label(link)} after it: {refusal.reason}") from None
        padding = conv_padding(conv)
        if padding is not None and np.any(affine.shift != 0):
            raise Refusal(f"{label} pads its input ({padding}): zero-padding x * s + t is not zero-padding x, so "
                          "the shift cannot move into the conv")
        out = links[-1].output[0] if links else node.output[0]
        stand_in = helper.make_node(node.op_type, [x], [out], name=node.name)  # the whole chain as one node
        composed = ChannelParams(affine, params.param_dtype, source=params.source, strict=False)
        plan = conv_input_plan(ctx, stand_in, conv, composed)  # bypassing it leaves the chain unread: dropped
        with_ = "".join(f", with {n.op_type} {node_label(n)}" for n in links)
        plan.note = f"folded into {label}'s input channels{with_}"
        return plan
