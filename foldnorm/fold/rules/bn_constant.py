"""A BatchNormalization whose input is a constant is itself a constant: evaluate it, store the result.

    Y = BN(X), X constant   →   Y = initializer  s * X + t     (float64, rounded once to X's dtype)

Weight standardisation (BiT's StdConv2d, `F.batch_norm(weight, training=True)`) exports this way: the legacy
exporter writes a training-mode BN on a Reshape of the Conv weight (its statistics are the weight's own, see
`batchnorm_params`), the dynamo exporter an inference BN whose mean and variance are ReduceMeans of it. Either
way nothing depends on the model's input, so ONNX Runtime would recompute the same tensor at every run. The
constant evaluator's budget bounds the work, the input and the output counted: past it the BN stays.
"""

from __future__ import annotations

import onnx

from foldnorm.fold.bn_math import apply_affine, emit
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import AloneRule, ChannelParams, Plan, Refusal
from foldnorm.onnxgraph.graph import node_label


class BatchNormConstant(AloneRule):
    """Replace a BatchNormalization of a constant input by the constant it computes."""

    name = "bn-constant"
    summary = "BN whose input is a constant (weight standardisation): evaluated into an initializer"
    op_types = ("BatchNormalization",)

    def accepts(self, ctx: FoldContext, bn: onnx.NodeProto) -> bool:
        """A BN whose data input the constant evaluator resolves."""
        return ctx.constant(bn.input[0]) is not None

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, params: ChannelParams) -> Plan:
        """A plan storing the BN's output as an initializer; raises `Refusal` when it cannot be stored."""
        index = ctx.index
        x = ctx.constant(bn.input[0])
        out = bn.output[0]
        if x is None or x.ndim < 2:
            raise Refusal("its constant input has no channel axis")
        if out in index.graph_outputs or any(out not in reader.input for reader in index.consumers.get(out, ())):
            raise Refusal("its constant output is a graph output or read inside a subgraph")
        affine = params.on_axis(x.ndim, 1, x.shape[1])
        over = ctx.constants.budget.refusal(x.size)
        if over is not None:
            raise Refusal(f"its input is a constant, but its output would be {over}")
        value, problem = emit(apply_affine(x, affine), x.dtype, channel_axis=1)
        if value is None:
            raise Refusal(f"its input is a constant, but evaluating it fails: {problem}")

        def apply() -> None:
            name = index.add_initializer(f"{node_label(bn)}.value".replace("/", ".").strip("."), value)
            for reader in list(index.consumers.get(out, ())):
                for k, read in enumerate(reader.input):
                    if read == out:
                        index.set_input(reader, k, name)
            inputs = list(bn.input)
            index.remove_node(bn)
            index.remove_if_dead(inputs)

        return Plan(bn, apply, note="a constant (its input is one: weight standardisation): evaluated in float64 "
                                    "and stored as an initializer")
