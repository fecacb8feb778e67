"""BatchNormalization (or a per-channel affine) after the quantized output of a linear op: op -> Q -> DQ -> BN.

ONNX Runtime's quantizer (QDQ format) writes every unfolded Conv-BN this way. The BN folds into the op by the
op's own rule (conv-bn, gemm-bn, ...); the activation QuantizeLinear/DequantizeLinear pair between them must
then move, because it quantized the op's output before the BN:

- exact, when the pair is per tensor (scale q, zero point z) and the BN's map is one positive scale s and one
  shift t with t / (s q) = k an integer: Q(s x + t; s q, z - k) = Q(x; q, z), so the pair stays after the
  folded op with scale s q and zero point z - k, and nothing moves (DQ gives back s DQ(x) + t);
- otherwise the pair is dropped and the folded op feeds what the BN fed (in a QDQ model the BN's own output
  pair, which stays): the quantization point moves from before the BN to after it. The dropped pair's rounding
  (at most |s_c| q / 2 on channel c, after the BN) and its clipping no longer apply; the report gives that
  bound, in steps of the quantizer after the BN when there is one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from foldnorm.fold.context import FoldContext
from foldnorm.fold.quantized import MOVED, PRECEDENCE, output_step, pair_quantizer
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal
from foldnorm.onnxgraph.graph import node_label


def _params(ctx: FoldContext, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """The constant (scale, zero point) of a Q/DQ node (a missing zero point is a uint8 zero), or None."""
    scale = ctx.constant(node.input[1])
    zero = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    return (scale, zero) if scale is not None and zero is not None else None


class QdqBatchNorm(NeighbourRule):
    """Fold a BatchNormalization through the activation Q/DQ pair into the linear op before it."""

    name = "qdq-bn"
    summary = "linear op -> Q -> DQ -> BN: folded into the op, the activation Q/DQ pair moves after it"
    op_types = ("DequantizeLinear",)

    def accepts(self, ctx: FoldContext, dq: onnx.NodeProto) -> bool:
        """A DequantizeLinear of a QuantizeLinear that only it reads (an activation's Q/DQ pair)."""
        return pair_quantizer(ctx, dq) is not None

    def has_fixed_weights(self, ctx: FoldContext, dq: onnx.NodeProto) -> bool:
        """Whether the op before the pair has constant weights that a rule folds into."""
        q = pair_quantizer(ctx, dq)
        return q is not None and ctx.takes_fold is not None and ctx.takes_fold(ctx.index.producer[q.input[0]])

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, dq: onnx.NodeProto, params: ChannelParams) -> Plan:
        """Fold `bn` into the op before the pair and move the pair, or raise `Refusal` saying why not."""
        q = pair_quantizer(ctx, dq)
        assert q is not None and ctx.fold_into is not None, "check() is asked only for a pair accepts() took"
        pair = f"the Q/DQ pair {node_label(q)}/{node_label(dq)}"
        q_params, dq_params = _params(ctx, q), _params(ctx, dq)
        if q_params is None or dq_params is None:
            raise Refusal(f"{pair} before it has scales or zero points that are not constants")
        if not all(np.array_equal(a, b) for a, b in zip(q_params, dq_params)):
            raise Refusal(f"{pair} before it requantizes (its two scales or zero points differ)")
        producer = ctx.index.producer[q.input[0]]
        try:
            inner = ctx.fold_into(bn, producer, params)
        except Refusal as refusal:
            raise Refusal(f"through {pair}: {refusal.reason}") from None
        scale, zero = q_params
        shift = self._exact_shift(params, scale, zero)
        if shift is not None:
            apply = self._rescaled(ctx, bn, q, dq, inner, params.affine.scale[0], shift)
            note = f"{inner.note or f'folded into {inner.target.op_type}'}; {pair} moved after it, rescaled exactly"
            return Plan(inner.target, apply, note=note, quantization=inner.quantization or "exact")
        info, step_in = np.iinfo(zero.dtype), float(np.max(scale))
        lo, hi = ((float(v) - float(zero.reshape(-1)[0])) * step_in for v in (info.min, info.max))
        bound = float(np.max(np.abs(params.affine.scale))) * step_in / 2
        step = output_step(ctx, bn.output[0])
        in_steps = f" = {bound / step:.2g} steps of the quantizer after it" if step else ""
        note = (f"{inner.note or f'folded into {inner.target.op_type}'}; the quantization point moved: {pair} "
                f"before the BN was dropped, so its rounding (at most {bound:.3g}{in_steps}) and its clipping to "
                f"[{lo:.3g}, {hi:.3g}] no longer apply")
        label = next(lab for lab in PRECEDENCE if lab in (inner.quantization, MOVED))
        return Plan(inner.target, self._dropped(ctx, bn, q, dq, inner), note=note, quantization=label)

    @staticmethod
    def _exact_shift(params: ChannelParams, scale: np.ndarray, zero: np.ndarray) -> int | None:
        """k when the BN's map is one positive scale s and one shift t = k s q (k an integer) and z - k fits the
        zero point's type, so the pair can move exactly; else None."""
        s, t = params.affine.scale, params.affine.shift
        if scale.size != 1 or np.any(s != s[0]) or np.any(t != t[0]) or not s[0] > 0:
            return None
        k = float(t[0] / (s[0] * float(scale.reshape(-1)[0])))
        info, moved = np.iinfo(zero.dtype), int(zero.reshape(-1)[0]) - round(k)
        if abs(k - round(k)) > 1e-6 * max(1.0, abs(k)) or not info.min <= moved <= info.max:
            return None
        return round(k)

    @staticmethod
    def _dropped(ctx: FoldContext, bn: onnx.NodeProto, q: onnx.NodeProto, dq: onnx.NodeProto,
                 inner: Plan) -> Callable[[], None]:
        """The rewrite that drops the pair, then folds the BN into the op before it."""

        def apply() -> None:
            index = ctx.index
            index.set_input(bn, 0, q.input[0])
            params = [*q.input[1:], *dq.input[1:], q.output[0], dq.output[0]]
            index.remove_node(dq)
            index.remove_node(q)
            index.remove_if_dead(params)
            inner.apply()

        return apply

    @staticmethod
    def _rescaled(ctx: FoldContext, bn: onnx.NodeProto, q: onnx.NodeProto, dq: onnx.NodeProto, inner: Plan,
                  s: float, k: int) -> Callable[[], None]:
        """The rewrite that folds the BN into the op before the pair and gives the pair scale s q and zero
        point z - k: op -> Q -> DQ -> (the BN's output name)."""

        def apply() -> None:
            index = ctx.index
            scale, zero = _params(ctx, q)  # type: ignore[misc]
            new_scale = (scale.astype(np.float64) * s).astype(scale.dtype)
            new_zero = (zero.astype(np.int64) - k).astype(zero.dtype)
            middle = index.fresh_name(f"{node_label(bn)}_folded".replace("/", "."))
            out = bn.output[0]
            index.set_input(bn, 0, q.input[0])
            index.set_output(bn, 0, middle)
            index.set_input(q, 0, middle)
            index.set_output(dq, 0, out)
            for node in (q, dq):
                ctx.set_param(node, 1, np.ascontiguousarray(new_scale), "scale")
                ctx.set_param(node, 2, np.ascontiguousarray(new_zero), "zero_point")
            inner.apply()

        return apply
