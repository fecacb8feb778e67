"""Folding into quantized (QDQ) parameters: the DequantizeLinear weight and bias of the op a BatchNorm folds into.

    W  = (W_q - z) * s                      DequantizeLinear, per output channel c or per tensor
    W' = W * f_c                            the fold (f: the BN's scale on output channel c)
       = (W_q' - z) * s'                    s'_c = s_c * |f_c|,  W_q' = W_q where f_c > 0, 2z - W_q where f_c < 0

This is exact (no weight moves by a quantization step) when every negated value fits the integer type: int8's
-128 (with z = 0) has no negation, and such a channel is refused. A per-tensor scale becomes per-channel on the
output axis, which needs DequantizeLinear-13 (`axis`). A factor that varies along another axis than the one the
scale varies along cannot fold exactly. With `requantize` those channels (or, when the fold is no per-channel
scale at all, the whole weight) are requantized symmetrically (int8: [-127, 127]), and the error is reported.

A float bias folds as in a float model. An int32 bias dequantized with scale `x_scale * w_scale` (ONNX Runtime's
convention, which its fused int8 kernels rely on) is re-derived on the new grid `x_scale * s'`, rounded once:
at most half a bias step per channel, reported in steps of the output's quantizer when one follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from foldnorm.fold.context import FoldContext
from foldnorm.onnxgraph.graph import is_onnx_op, node_label, set_attr
from foldnorm.onnxgraph.quantize import channel_shape, is_integer_type, quantization_axis, quantize

# The `quantization` label of a fold into quantized parameters, in the report:
EXACT = "exact"  # integers kept, scales rescaled; the outputs move only by float rounding
BIAS_ROUNDED = "bias-rounded"  # as exact, but an int32 bias was rounded onto its new grid
MOVED = "moved"  # an activation quantization point moved (the Q/DQ pair before the BN was dropped)
REQUANTIZED = "requantized"  # weights requantized (`requantize`), with rounding error
#: which label a record shows when several apply (the first that applies).
PRECEDENCE = (REQUANTIZED, MOVED, BIAS_ROUNDED, EXACT)


@dataclass(frozen=True)
class Dequantized:
    """A DequantizeLinear of constants feeding an input of a node: the integer tensor and its parameters."""

    node: onnx.NodeProto
    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None  # None: per tensor
    #: the QuantizeLinear producing `values` from a constant float tensor (a QAT export), when it does.
    source: onnx.NodeProto | None = None

    def dequantized(self) -> np.ndarray:
        """The exact float64 values `(values - zero_point) * scale`."""
        shape = channel_shape(self.scale, self.axis, self.values.ndim)
        zero = self.zero_point.astype(np.float64).reshape(shape)
        return (self.values.astype(np.float64) - zero) * self.scale.astype(np.float64).reshape(shape)


def dequantized_input(ctx: FoldContext, node: onnx.NodeProto, k: int) -> Dequantized | None:
    """The DequantizeLinear producing input `k` of `node` when its operands are constants, else None."""
    if len(node.input) <= k or not node.input[k]:
        return None
    dq = ctx.index.producer.get(node.input[k])
    if dq is None or not is_onnx_op(dq, "DequantizeLinear"):
        return None
    values, scale = ctx.constant(dq.input[0]), ctx.constant(dq.input[1])
    if values is None or scale is None or not is_integer_type(values.dtype):
        return None
    zero = ctx.constant(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale, values.dtype)
    if zero is None:
        return None
    try:
        axis = quantization_axis(dq, scale, values.ndim)
    except ValueError:
        return None
    source = ctx.index.producer.get(dq.input[0])
    if source is not None and not (is_onnx_op(source, "QuantizeLinear") and ctx.constant(source.input[0]) is not None):
        source = None
    return Dequantized(dq, values, scale, zero.reshape(scale.shape), axis, source)


def pair_quantizer(ctx: FoldContext, dq: onnx.NodeProto) -> onnx.NodeProto | None:
    """For the DequantizeLinear of an activation Q/DQ pair: the QuantizeLinear that only `dq` reads and that
    quantizes a value another node computes; else None."""
    q = ctx.index.producer.get(dq.input[0]) if is_onnx_op(dq, "DequantizeLinear") else None
    if q is None or not is_onnx_op(q, "QuantizeLinear") or ctx.index.only_consumer(q.output[0]) is not dq:
        return None
    return q if q.input[0] in ctx.index.producer else None


def producer_through_pair(ctx: FoldContext, name: str) -> onnx.NodeProto | None:
    """The node producing `name`, looking through an activation Q/DQ pair (`op -> Q -> DQ -> name`: `op`)."""
    node = ctx.index.producer.get(name)
    q = pair_quantizer(ctx, node) if node is not None else None
    return node if q is None else ctx.index.producer[q.input[0]]


def activation_scale(ctx: FoldContext, name: str) -> float | None:
    """The per-tensor scale of the DequantizeLinear producing `name` (an activation's step), else None."""
    dq = ctx.index.producer.get(name)
    if dq is None or not is_onnx_op(dq, "DequantizeLinear"):
        return None
    scale = ctx.constant(dq.input[1])
    return float(scale.reshape(-1)[0]) if scale is not None and scale.size == 1 else None


def has_int32_biases(ctx: FoldContext) -> bool:
    """Whether some op of the graph takes its bias (input 2) as a DequantizeLinear of int32 constants."""
    index = ctx.index
    for node in index.nodes:
        bias = node.input[2] if len(node.input) > 2 and not index.is_removed(node) else ""
        dq = index.producer.get(bias) if bias else None
        if dq is not None and is_onnx_op(dq, "DequantizeLinear") \
                and index.elem_type(dq.input[0]) == onnx.TensorProto.INT32:
            return True
    return False


def output_step(ctx: FoldContext, name: str) -> float | None:
    """The step of the per-tensor QuantizeLinear that alone reads `name`, else None."""
    q = ctx.index.only_consumer(name)
    if q is None or not is_onnx_op(q, "QuantizeLinear") or q.input[0] != name:
        return None
    scale = ctx.constant(q.input[1])
    return float(scale.reshape(-1)[0]) if scale is not None and scale.size == 1 else None


def axis_supported(ctx: FoldContext) -> bool:
    """Whether DequantizeLinear takes a per-axis scale here (opset 13+ of the model being folded)."""
    if ctx.model is None:
        return False  # a subgraph or function: the opset is the model's, not known here
    versions = [o.version for o in ctx.model.opset_import if o.domain in ("", "ai.onnx")]
    return bool(versions) and versions[0] >= 13


@dataclass(frozen=True)
class QuantizedWeights:
    """New parameters for a DequantizeLinear weight, and what the fold did to it."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    changed_values: bool
    requantized: str = ""  # what was requantized and its error (empty when the fold is exact)
    negated: int = 0  # channels whose integers were negated


def fold_weights(dq: Dequantized, factor: np.ndarray, out_axis: int, per_axis: bool,
                 requantize: bool) -> tuple[QuantizedWeights | None, str | None]:
    """Fold a per-output-channel `factor` (along `out_axis` of the weight) into `dq`.

    Returns `(weights, None)` or `(None, reason)`; without `requantize` only exact folds are returned.
    """
    factor = np.asarray(factor, dtype=np.float64).reshape(-1)
    if np.all(factor == factor[0]) and dq.axis != out_axis:
        axis = dq.axis  # one factor: the layout stays (per tensor, or per axis along another axis)
        factor = np.full(dq.scale.size, factor[0])
    elif dq.axis == out_axis or (dq.axis is None and per_axis):
        axis = out_axis
        factor = np.broadcast_to(factor, (dq.values.shape[out_axis],))
    else:
        where = "per tensor" if dq.axis is None else f"along axis {dq.axis}"
        why = (f"the weight is quantized {where} and the fold scales its output channels (axis {out_axis}) by "
               "different factors")
        if dq.axis is None:
            why += ", which needs a per-channel scale: DequantizeLinear-13 or later"
        if not requantize:
            return None, why + "; --requantize requantizes it"
        return requantize_weights(dq, _scaled(dq, factor, out_axis), out_axis if per_axis else None, why), None
    scale = np.broadcast_to(dq.scale.reshape(-1), factor.shape).astype(np.float64)
    zero = np.broadcast_to(dq.zero_point.reshape(-1), factor.shape)
    new_scale = (scale * np.abs(factor)).astype(dq.scale.dtype)
    values = np.moveaxis(dq.values, axis, 0).copy() if axis is not None else dq.values.reshape(1, -1).copy()
    info = np.iinfo(dq.values.dtype)
    bad: list[str] = []
    for c in range(factor.size):
        if factor[c] == 0 or not np.isfinite(new_scale[c]) or new_scale[c] <= 0:
            bad.append(f"channel {c}: a BN scale of {factor[c]:.3g} gives a quantization scale of {new_scale[c]:.3g}")
        elif factor[c] < 0:
            negated = 2 * int(zero[c]) - values[c].astype(np.int64)
            if negated.min() < info.min or negated.max() > info.max:
                bad.append(f"channel {c} holds {int(values[c].min())} (zero point {int(zero[c])}), whose negation "
                           f"is outside {dq.values.dtype}")
            else:
                values[c] = negated
    if bad:
        why = "the BN's scale cannot fold exactly into the quantized weight: " + "; ".join(bad[:3])
        if len(bad) > 3:
            why += f" (and {len(bad) - 3} more channel(s))"
        if not requantize:
            return None, why + "; --requantize requantizes the weight"
        return requantize_weights(dq, _scaled(dq, factor, axis), axis, why), None
    layout = np.moveaxis(values, 0, axis) if axis is not None else values.reshape(dq.values.shape)
    shape = dq.scale.shape if axis is None else factor.shape
    negated_channels = int(np.count_nonzero(factor < 0))
    return QuantizedWeights(layout, new_scale.reshape(shape), np.array(zero, dq.zero_point.dtype).reshape(shape),
                            axis, negated_channels > 0, negated=negated_channels), None


def _scaled(dq: Dequantized, factor: np.ndarray, axis: int | None) -> np.ndarray:
    """The folded float64 weight: the dequantized weight times `factor` along `axis` (a scalar when None)."""
    shape = channel_shape(factor, axis, dq.values.ndim) if axis is not None and factor.size > 1 else ()
    return dq.dequantized() * factor.reshape(shape)


def requantize_weights(dq: Dequantized, folded: np.ndarray, axis: int | None, why: str) -> QuantizedWeights:
    """Quantize the float64 `folded` weight symmetrically (int8: [-127, 127]) per channel along `axis` (or per
    tensor), in `dq`'s integer type; the note says why and how far a weight moved."""
    dtype = dq.values.dtype
    info = np.iinfo(dtype)
    half = (int(info.max) - int(info.min)) // 2
    zero = 0 if info.min < 0 else half + 1
    moved = np.moveaxis(folded, axis, 0) if axis is not None else folded.reshape(1, -1)
    flat = moved.reshape(moved.shape[0], -1)
    peak = np.max(np.abs(flat), axis=1)
    scale = np.where(peak > 0, peak / half, 1.0).astype(dq.scale.dtype)
    steps = np.rint(flat / scale.astype(np.float64)[:, None])
    values = (np.clip(steps, -half, half) + zero).astype(dtype)
    error = np.abs((values.astype(np.float64) - zero) * scale.astype(np.float64)[:, None] - flat)
    relative = float(np.max(np.where(peak > 0, error.max(axis=1) / np.where(peak > 0, peak, 1.0), 0.0)))
    layout = values.reshape(moved.shape)
    layout = np.moveaxis(layout, 0, axis) if axis is not None else layout.reshape(folded.shape)
    where = f"per channel along axis {axis}" if axis is not None else "per tensor"
    note = (f"requantized the {dtype} weights {where} ({why}): a weight moved by at most "
            f"{relative:.2%} of its channel's largest magnitude")
    return QuantizedWeights(layout, scale, np.full(scale.shape, zero, dtype=dq.zero_point.dtype), axis, True,
                            requantized=note)


def bias_on_grid(b64: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray | None, float, str | None]:
    """The float64 bias as int32 steps of `grid` (per channel): `(values, largest error, None)` or a reason."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        steps = np.rint(b64 / grid.astype(np.float64))
    info = np.iinfo(np.int32)
    if not np.all(np.isfinite(steps)) or steps.min(initial=0) < info.min or steps.max(initial=0) > info.max:
        return None, 0.0, "the folded bias does not fit an int32 on the grid x_scale * w_scale"
    error = float(np.max(np.abs(steps * grid - b64), initial=0.0))
    return steps.astype(np.int32), error, None


def write_weights(ctx: FoldContext, target: onnx.NodeProto, dq: Dequantized, new: QuantizedWeights) -> None:
    """Give the DequantizeLinear `dq` feeding `target`'s weight the parameters `new` (shared tensors are
    copied, never edited; a DequantizeLinear that other nodes read too is copied for `target`).

    A QAT export's `QuantizeLinear(W)` keeps its float weight when negating those rows of W gives the new
    integers; otherwise the integers are written as a constant.
    """
    node = dq.node
    if ctx.index.uses(node.output[0]) > 1:
        node = onnx.NodeProto()
        node.CopyFrom(dq.node)
        node.output[0] = node.name = ctx.index.fresh_name(f"{dq.node.output[0]}_folded")
        ctx.index.insert_before(target, [node])
        ctx.index.set_input(target, 1, node.output[0])
        ctx.notes.append(f"the dequantized weight {dq.node.output[0]!r} is shared with other nodes: folded into a "
                         f"copy {node.output[0]!r}")
    if new.changed_values and not _negate_source(ctx, node, dq, new):
        ctx.set_param(node, 0, np.ascontiguousarray(new.values), "weight_quantized")
    ctx.set_param(node, 1, np.ascontiguousarray(new.scale), "weight_scale")
    changed = new.zero_point.shape != dq.zero_point.shape or not np.array_equal(new.zero_point, dq.zero_point)
    has_zero = len(node.input) > 2 and bool(node.input[2])
    if changed and (has_zero or np.any(new.zero_point != 0)):
        ctx.set_param(node, 2, np.ascontiguousarray(new.zero_point), "weight_zero_point")
    if new.axis is not None:
        set_attr(node, "axis", new.axis)


def _negate_source(ctx: FoldContext, node: onnx.NodeProto, dq: Dequantized, new: QuantizedWeights) -> bool:
    """Negate the float rows of a QAT `QuantizeLinear(W)` that only `node` reads when that gives `new.values`."""
    q = dq.source
    if q is None or new.requantized or dq.axis not in (None, new.axis) or ctx.index.uses(q.output[0]) != 1 \
            or node.input[0] != q.output[0]:
        return False
    weight = ctx.constant(q.input[0])
    args = [ctx.constant(n) for n in q.input[1:] if n]
    if weight is None or any(a is None for a in args):
        return False
    sign = np.where(new.values == dq.values, 1.0, -1.0).astype(weight.dtype)
    flipped = weight * sign
    try:
        same = np.array_equal(quantize(q, [flipped, *args]), new.values)  # type: ignore[list-item]
    except ValueError:
        return False
    if same:
        ctx.set_param(q, 0, np.ascontiguousarray(flipped), "weight")
    return same


def write_bias(ctx: FoldContext, target: onnx.NodeProto, k: int, values: np.ndarray, grid: np.ndarray) -> None:
    """Feed input `k` of `target` with `DequantizeLinear(values (int32), grid, 0)`, a new node before it."""
    base = f"{node_label(target)}.bias".replace("/", ".").strip(".")
    index = ctx.index
    names = [index.add_initializer(f"{base}_quantized", np.ascontiguousarray(values)),
             index.add_initializer(f"{base}_scale", np.ascontiguousarray(grid)),
             index.add_initializer(f"{base}_zero_point", np.zeros(grid.shape, np.int32))]
    out = index.fresh_name(f"{base}_dequantized")
    dq = helper.make_node("DequantizeLinear", names, [out], name=out)  # a fresh value name: a unique node name
    if grid.size > 1:
        set_attr(dq, "axis", 0)
    old = target.input[k] if len(target.input) > k else ""
    index.insert_before(target, [dq])
    index.set_input(target, k, out)
    if old:
        index.remove_if_dead([old])
