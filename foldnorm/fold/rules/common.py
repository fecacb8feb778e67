"""What the rules share: a BatchNorm's map, a neighbour's constant weights, and the emit-and-rewrite plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from foldnorm.errors import InvalidModelError
from foldnorm.fold.bn_math import Scaled, batch_statistics, batchnorm_affine, emit
from foldnorm.fold.context import FoldContext
from foldnorm.fold.quantized import (
    BIAS_ROUNDED,
    EXACT,
    REQUANTIZED,
    Dequantized,
    QuantizedWeights,
    activation_scale,
    axis_supported,
    bias_on_grid,
    dequantized_input,
    fold_weights,
    has_int32_biases,
    output_step,
    requantize_weights,
    write_bias,
    write_weights,
)
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal, is_float
from foldnorm.onnxgraph.edits import absorb, bypass, shape_readers
from foldnorm.onnxgraph.graph import attr, attribute_refs, is_onnx_op, node_label, set_attr


def batchnorm_params(ctx: FoldContext, bn: onnx.NodeProto, *, subject: bool = True) -> ChannelParams:
    """A BatchNormalization's inference map resolved to constants; raises `Refusal` when it has none.

    BatchNormalization-1/6 (opset below 7) are read with `is_test=1`; `consumed_inputs` plays no part.
    A training-mode BN whose input is a constant (weight standardisation) normalizes with that constant's
    statistics, so it too is a fixed map, valid where the BN itself is folded away (`subject`): not for a rule
    that rewrites the node's parameters and keeps it (its statistics would still be taken from the input).
    Parameters of different lengths make the model invalid (`InvalidModelError`), not a refusal.
    """
    training = bool(attr(bn, "training_mode", 0))
    legacy_training = ctx.opset < 7 and not attr(bn, "is_test", 0)  # BatchNormalization-1/6 default to training
    x = ctx.constant(bn.input[0]) if (training or legacy_training) and subject else None
    if training and x is None:
        raise Refusal("training_mode=1: the node computes batch statistics")
    if legacy_training and x is None:
        raise Refusal(f"is_test=0 (BatchNormalization-6 and older, opset {ctx.opset}): the node computes batch "
                      "statistics (training mode)")
    if attr(bn, "spatial", 1) == 0:
        raise Refusal("spatial=0 (BatchNormalization-7 and older): per-element statistics are not supported")
    extra = [o for o in bn.output[1:] if o]
    if extra and (x is None or any(ctx.index.uses(o) for o in extra)):
        raise Refusal("the node also outputs running statistics (training graph)")
    roles = ("scale", "bias") if x is not None else ("scale", "bias", "mean", "var")  # training: x's statistics
    values = []
    for role, name in zip(roles, bn.input[1:5]):
        value = ctx.constant(name)
        if value is None:
            raise Refusal(f"its {role} {name!r} is {_origin(ctx, name)}, not a constant")
        values.append(value)
    if x is not None:
        values.extend(batch_statistics(x))
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
    """Where a value that is not a constant comes from, for a reason sentence (naming the initializers also listed
    as graph inputs it comes from: defaults a caller may override, unless read as constants)."""
    index = ctx.index
    budget = ctx.constants.reason(name)  # the constant evaluator's budget stopped it
    if budget is not None:
        return budget
    hint = "which a caller may override; --inputs-as-constants reads such inputs as constants"
    if name in index.graph_inputs and name in index.initializers:
        return f"an initializer also listed as a graph input ({hint})"
    defaults = [v for v in index.upstream(name) if v in index.graph_inputs and v in index.initializers]
    origin = "a graph input" if index.is_graph_input(name) else "computed at run time"
    if defaults:
        listed = ", ".join(repr(v) for v in defaults[:3]) + (", ..." if len(defaults) > 3 else "")
        origin += f" from {listed} (initializers also listed as graph inputs, {hint})"
    return origin


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
    (e.g. an attribute change). A quantized weight (`DequantizeLinear` of constants) keeps its integers and
    takes the fold in its scale (`fold.quantized`).
    """
    quantized = dequantized_input(ctx, target, 1)
    if quantized is not None:
        out = node.output[0] if position == "after" else target.output[0]
        writes, note, label = _quantized_writes(ctx, target, quantized, weight, bias, out, reshape_weight)
    else:
        writes, note, label = _float_writes(ctx, target, weight, bias, reshape_weight), "", ""

    def apply() -> None:
        writes()
        if position == "after":
            absorb(ctx.index, node, target)
        else:
            bypass(ctx.index, node, reader or target)
        if also is not None:
            also()

    return Plan(target, apply, note=note, quantization=label)


def _float_writes(ctx: FoldContext, target: onnx.NodeProto, weight: tuple[np.ndarray | Scaled, np.dtype, int],
                  bias: tuple[np.ndarray, int],
                  reshape_weight: Callable[[np.ndarray], np.ndarray] | None) -> Callable[[], None]:
    """The writes of a float fold: the weight and the bias rounded once to the weight's dtype."""
    b64, bias_index = bias
    new_w = _emitted(target, weight)
    if reshape_weight is not None:
        new_w = reshape_weight(new_w)
    new_b = _float_bias(target, b64, weight[1])

    def writes() -> None:
        # The bias first: a dynamo `Expand(Shape(W))` zero bias then stops reading W before W is replaced.
        ctx.set_param(target, bias_index, np.ascontiguousarray(new_b), "bias")
        ctx.set_param(target, 1, new_w, "weight")  # (a broadcast stand-in under inspect: left as it is)

    return writes


def _emitted(target: onnx.NodeProto, weight: tuple[np.ndarray | Scaled, np.dtype, int]) -> np.ndarray:
    """The folded float weight rounded once to its dtype; `Refusal` when it would overflow or underflow."""
    w64, dtype, axis = weight
    new_w, problem = emit(w64, dtype, channel_axis=axis)
    if new_w is None:
        raise Refusal(f"not folded into {target.op_type} {node_label(target)}: {problem}")
    return new_w


def _float_bias(target: onnx.NodeProto, b64: np.ndarray, dtype: np.dtype) -> np.ndarray:
    new_b, problem = emit(b64, dtype, channel_axis=b64.ndim - 1 if b64.ndim else 0)
    if new_b is None:
        raise Refusal(f"not folded into {target.op_type} {node_label(target)}: bias {problem}")
    return new_b


def weight_writes(ctx: FoldContext, target: onnx.NodeProto,
                  weight: tuple[np.ndarray | Scaled, np.dtype, int]) -> tuple[Callable[[], None], str, str]:
    """The write of a folded weight whose bias the caller folds as a float: `(write, note, quantization label)`.

    A quantized weight keeps its integers (`quantized_weights`); a float one is rounded once to its dtype.
    """
    dq = dequantized_input(ctx, target, 1)
    if dq is not None:
        new = quantized_weights(ctx, target, dq, weight)
        note = f"folded into {target.op_type} ({weights_note(dq, new)})"
        return (lambda: write_weights(ctx, target, dq, new)), note, REQUANTIZED if new.requantized else EXACT
    new_w = _emitted(target, weight)

    def write() -> None:
        ctx.set_param(target, 1, new_w, "weight")

    return write, "", ""


def quantized_weights(ctx: FoldContext, target: onnx.NodeProto, dq: Dequantized,
                      weight: tuple[np.ndarray | Scaled, np.dtype, int],
                      reshape_weight: Callable[[np.ndarray], np.ndarray] | None = None) -> QuantizedWeights:
    """The new parameters of `target`'s quantized weight `dq` for the fold `weight`; raises `Refusal` when the
    fold is not exact and `--requantize` was not given."""
    w64, _, axis = weight
    if isinstance(w64, Scaled) and reshape_weight is None:
        new, problem = fold_weights(dq, w64.factor, axis, axis_supported(ctx), ctx.options.requantize)
    elif ctx.options.requantize:
        folded = w64.exact() if isinstance(w64, Scaled) else w64
        folded = reshape_weight(folded) if reshape_weight is not None else folded
        new, problem = requantize_weights(dq, folded, dq.axis, "the fold is no per-output-channel scale"), None
    else:
        new, problem = None, ("the fold changes its quantized weight by more than a per-output-channel scale, "
                              "which no new quantization scale gives exactly; --requantize requantizes it")
    if new is None:
        raise Refusal(f"not folded into {target.op_type} {node_label(target)}: {problem}")
    return new


def weights_note(dq: Dequantized, new: QuantizedWeights) -> str:
    """What a fold did to a quantized weight, for the report."""
    if new.requantized:
        return new.requantized
    dtype = dq.values.dtype
    parts = [f"{dtype} weights kept, their scales multiplied by |BN scale|"]
    if new.negated:
        parts.append(f"{new.negated} channel(s) negated")
    if dq.axis is None and new.axis is not None:
        parts.append("the per-tensor scale became per-channel")
    return ", ".join(parts)


def _quantized_writes(ctx: FoldContext, target: onnx.NodeProto, dq: Dequantized,
                      weight: tuple[np.ndarray | Scaled, np.dtype, int], bias: tuple[np.ndarray, int], out: str,
                      reshape_weight: Callable[[np.ndarray], np.ndarray] | None) -> tuple[Callable[[], None], str, str]:
    """The writes of a fold into a quantized weight and its bias, the report's note and the label."""
    new = quantized_weights(ctx, target, dq, weight, reshape_weight)
    b64, k = bias
    existing = dequantized_input(ctx, target, k)
    x_step = activation_scale(ctx, target.input[0])
    # A new bias takes the form the model's biases have: int32 on x_scale * w_scale (ONNX Runtime's quantizer,
    # which its fused kernels need) or float (QAT exports; TensorRT wants float biases).
    absent = len(target.input) <= k or not target.input[k]
    channels = b64.shape[-1] if b64.ndim else 1
    grid_ok = new.axis in (None, weight[2]) and b64.size == channels
    if (existing is None and not (absent and has_int32_biases(ctx))) or x_step is None or not grid_ok:
        if existing is not None:
            raise Refusal(f"not folded into {target.op_type} {node_label(target)}: its int32 bias cannot be "
                          "re-derived (no per-tensor input scale, or the weight's scale is not per output channel)")
        new_b = _float_bias(target, b64, weight[1])

        def write_float_bias() -> None:
            ctx.set_param(target, k, np.ascontiguousarray(new_b), "bias")

        bias_write, rounded, fact = write_float_bias, 0.0, ""
    else:
        grid = np.broadcast_to(np.float32(x_step) * new.scale.reshape(-1).astype(np.float32), (channels,)).copy()
        values, rounded, problem = bias_on_grid(b64.reshape(-1), grid)
        if values is None:
            raise Refusal(f"not folded into {target.op_type} {node_label(target)}: {problem}")
        step = output_step(ctx, out)
        in_steps = f" = {rounded / step:.2g} steps of the next quantizer" if step else ""
        fact = f"; the int32 bias was rounded onto its grid x_scale * w_scale (by at most {rounded:.3g}{in_steps})"

        def bias_write() -> None:
            write_bias(ctx, target, k, values, grid)

    def writes() -> None:
        bias_write()
        write_weights(ctx, target, dq, new)

    label = REQUANTIZED if new.requantized else BIAS_ROUNDED if rounded > 0 else EXACT
    return writes, f"folded into {target.op_type} ({weights_note(dq, new)}{fact})", label


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


def gemm_takes_bias(ctx: FoldContext, gemm: onnx.NodeProto) -> None:
    """After a fold wrote a Gemm's C: beta becomes 1 and, below opset 7 (Gemm-1/6), `broadcast=1` lets the new C
    ([N], or the old C's shape) broadcast over the output as it does from Gemm-7 on."""
    set_attr(gemm, "beta", 1.0)
    if ctx.opset < 7:
        set_attr(gemm, "broadcast", 1)


def require_numpy_broadcasting(ctx: FoldContext, what: str) -> None:
    """Refuse a rewrite that writes `what` into a graph of opset below 7, where element-wise ops (and Gemm's C)
    broadcast only through `broadcast`/`axis` attributes foldnorm does not write."""
    if ctx.opset < 7:
        raise Refusal(f"opset {ctx.opset}: {what} would need the broadcasting of opset 7 and later")
