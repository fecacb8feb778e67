"""What the rules share: a BatchNorm's map, a neighbour's constant weights, and the emit-and-rewrite plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from foldnorm.errors import InvalidModelError
from foldnorm.fold.bn_math import Scaled, batchnorm_affine, emit
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal, is_float
from foldnorm.onnxgraph.edits import absorb, bypass, shape_readers
from foldnorm.onnxgraph.graph import attr, attribute_refs, is_onnx_op, node_label


def batchnorm_params(ctx: FoldContext, bn: onnx.NodeProto) -> ChannelParams:
    """A BatchNormalization's inference map resolved to constants; raises `Refusal` when it has none.

    Parameters of different lengths make the model invalid (`InvalidModelError`), not a refusal.
    """
    if attr(bn, "training_mode", 0):
        raise Refusal("training_mode=1: the node computes batch statistics")
    if attr(bn, "spatial", 1) == 0:
        raise Refusal("spatial=0 (BatchNormalization-7 and older): per-element statistics are not supported")
    if len([o for o in bn.output if o]) > 1:
        raise Refusal("the node also outputs running statistics (training graph)")
    values = []
    for role, name in zip(("scale", "bias", "mean", "var"), bn.input[1:5]):
        value = ctx.constant(name)
        if value is None:
            raise Refusal(f"its {role} {name!r} is {_origin(ctx, name)}, not a constant")
        values.append(value)
    sizes = {v.size for v in values}
    if len(sizes) != 1:
        raise InvalidModelError(
            f"BatchNormalization {node_label(bn)} has parameters of different lengths "
            f"{[v.size for v in values]}; fix the model (re-export it) before folding."
        )
    eps = float(attr(bn, "epsilon", 1e-5))
    affine = batchnorm_affine(values[0], values[1], values[2], values[3], eps)
    if not (np.all(np.isfinite(affine.scale)) and np.all(np.isfinite(affine.shift))):
        raise Refusal("its scale or shift is not finite (a zero variance with eps = 0?)")
    return ChannelParams(affine, values[0].dtype, source=node_label(bn))


def _origin(ctx: FoldContext, name: str) -> str:
    """Where a value that is not a constant comes from, for a reason sentence."""
    return ctx.constants.reason(name) or ("a graph input" if ctx.index.is_graph_input(name) else
                                          "computed at run time")


def constant_weights(
    ctx: FoldContext, node: onnx.NodeProto, bias_index: int = 2
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resolve a neighbour's weight (input 1) and optional bias (input `bias_index`) to constants.

    Returns `(weight, bias_or_None)`; raises `Refusal` when either is not a constant.
    """
    label = node_label(node)
    if len(node.input) < 2 or not node.input[1]:
        raise Refusal(f"{node.op_type} {label} has no weight input")
    weight_name = node.input[1]
    weight = ctx.constant(weight_name)
    if weight is None:
        raise Refusal(f"the weight {weight_name!r} of {node.op_type} {label} is {_origin(ctx, weight_name)}, "
                      "not a constant")
    if not is_float(weight):
        raise Refusal(f"the weight of {node.op_type} {label} is {weight.dtype.name}, not a float type")
    bias = None
    if len(node.input) > bias_index and node.input[bias_index]:
        bias = ctx.constant(node.input[bias_index])
        if bias is None:
            raise Refusal(f"the bias {node.input[bias_index]!r} of {node.op_type} {label} is "
                          f"{_origin(ctx, node.input[bias_index])}, not a constant")
    return weight, bias


def rewrite_plan(
    ctx: FoldContext,
    node: onnx.NodeProto,
    target: onnx.NodeProto,
    weight: tuple[np.ndarray | Scaled, np.dtype, int],
    bias: tuple[np.ndarray, int],
    position: str = "after",
    reshape_weight: Callable[[np.ndarray], np.ndarray] | None = None,
    also: Callable[[], None] | None = None,
    reader: onnx.NodeProto | None = None,
) -> Plan:
    """Emit folded `(w64, dtype, channel_axis)` and `(b64, bias_input_index)` into `target`, removing `node`.

    Both are rounded once to the target's weight dtype; a value that would overflow or underflow raises
    `Refusal` with the reason. `position="after"`: `target` produces `node`'s input (it takes over node's
    output name); `"before"`: `target` consumes node's output (it reads node's input instead; or `reader`, a
    node between them such as a Flatten, does).
    `reshape_weight` maps the checked layout of `w64` back to the weight's own layout; `also` runs last
    (e.g. an attribute change).
    """
    w64, dtype, axis = weight
    b64, bias_index = bias
    label = node_label(target)
    new_w, problem = emit(w64, dtype, channel_axis=axis)
    if new_w is None:
        raise Refusal(f"not folded into {target.op_type} {label}: {problem}")
    if reshape_weight is not None:
        new_w = reshape_weight(new_w)
    new_b, problem = emit(b64, dtype, channel_axis=b64.ndim - 1 if b64.ndim else 0)
    if new_b is None:
        raise Refusal(f"not folded into {target.op_type} {label}: bias {problem}")

    def apply() -> None:
        # The bias first: a dynamo `Expand(Shape(W))` zero bias then stops reading W before W is replaced.
        ctx.set_param(target, bias_index, np.ascontiguousarray(new_b), "bias")
        ctx.set_param(target, 1, np.ascontiguousarray(new_w), "weight")
        if position == "after":
            absorb(ctx.index, node, target)
        else:
            bypass(ctx.index, node, reader or target)
        if also is not None:
            also()

    return Plan(target, apply)


@dataclass
class ProducerFold:
    """A BatchNorm's map folded into `producer` by an "after" rule, as if `stand_in` (a BN reading the producer's
    output alone) stood between the producer and a reader of its output."""

    producer: onnx.NodeProto
    stand_in: onnx.NodeProto
    plan: Plan

    def apply(self, ctx: FoldContext, reader: onnx.NodeProto) -> None:
        """Place the stand-in before `reader` (the producer's output, renamed, feeds it; Shape readers follow),
        then fold it away: the producer, or the bias Add a rule adds, writes the old name again."""
        index = ctx.index
        out = self.producer.output[0]
        moved = index.fresh_name(f"{out}.unbiased")
        index.set_output(self.producer, 0, moved)
        for shape_reader in shape_readers(index, out):
            index.set_input(shape_reader, list(shape_reader.input).index(out), moved)
        self.stand_in.input[0], self.stand_in.output[0] = moved, out
        index.insert_before(reader, [self.stand_in])
        self.plan.apply()


def after_rules(ctx: FoldContext, producer: onnx.NodeProto | None, *, caller: str) -> list[NeighbourRule]:
    """The registry's "after" rules for BatchNorms that match `producer` (turned off or not), but `caller`."""
    from foldnorm.fold.rules import RULES  # the registry imports this module: a late import

    if producer is None:
        return []
    return [rule for rule in RULES if isinstance(rule, NeighbourRule) and rule.position == "after"
            and rule.name != caller and "batchnorm" in rule.kinds and is_onnx_op(producer, *rule.op_types)
            and rule.wanted(ctx.options) and rule.accepts(ctx, producer)]


def fold_into_producer(ctx: FoldContext, bn: onnx.NodeProto, producer: onnx.NodeProto, params: ChannelParams,
                       *, caller: str, name: str) -> ProducerFold:
    """Fold `params`, a map on `producer`'s output, into `producer` with the first of its `after_rules` that
    takes it (never the rule `caller`, so nothing recurses).

    The rule sees a stand-in BatchNormalization named `name` (with `bn`'s metadata) that reads the producer's
    output, so it computes, checks and refuses exactly as for a BN there. Raises `Refusal` with the rules'
    reasons when none folds it, or when the producer's output is read by another node or is a graph output.
    """
    index = ctx.index
    out = producer.output[0]
    what = f"{producer.op_type} {node_label(producer)}"
    if index.uses(out) - len(shape_readers(index, out)) > 1 or out in index.graph_outputs:
        raise Refusal(f"the output of {what} is also read elsewhere")
    if attribute_refs(producer):
        raise Refusal(f"{what} has attributes that refer to the enclosing function's")
    stand_in = helper.make_node("BatchNormalization", [out], [out], name=name)
    stand_in.metadata_props.extend(bn.metadata_props)
    reasons = []
    for rule in after_rules(ctx, producer, caller=caller):
        off = ctx.options.turned_off(rule.name)
        if off is not None:
            reasons.append(off)
            continue
        try:
            return ProducerFold(producer, stand_in, rule.check(ctx, stand_in, producer, params))
        except Refusal as refusal:
            reasons.append(refusal.reason)
    raise Refusal(f"{what}: " + ("; ".join(reasons) if reasons else "no rule folds into it"))
