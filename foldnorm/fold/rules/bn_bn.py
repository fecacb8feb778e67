"""BatchNormalization after another BatchNormalization with nothing linear before it: merge the two.

    BN2(BN1(X)) = s2 * (s1 * X + t1) + t2 = (s1 s2) X + (s2 t1 + t2)

BN1 is rewritten to carry the composed map (mean 0, variance 1, gamma = s * sqrt(1 + eps1), beta = t),
and BN2 disappears. (A BN after a Conv is folded into the Conv first, so Conv → BN → BN needs no rule.)
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.fold.bn_math import ChannelAffine, emit
from foldnorm.fold.context import FoldContext
from foldnorm.fold.normalizations import classify
from foldnorm.fold.rules.base import ChannelParams, NeighbourRule, Plan, Refusal
from foldnorm.fold.rules.common import batchnorm_params
from foldnorm.onnxgraph.edits import absorb
from foldnorm.onnxgraph.graph import attr, node_label


class BatchNormChain(NeighbourRule):
    """Fold a BatchNormalization into the foldable BatchNormalization that produces its input."""

    name = "bn-bn"
    summary = "BN -> BN with nothing linear before: merged into the first BN"
    op_types = ("BatchNormalization",)

    def accepts(self, ctx: FoldContext, first: onnx.NodeProto) -> bool:
        """A BatchNormalization in the default domain that is not a protected stand-in."""
        info = classify(ctx.index, first, ctx.constants)
        return info is not None and not info.protected

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, first: onnx.NodeProto, params: ChannelParams) -> Plan:
        """Compute the merged parameters of `first`, or raise `Refusal` saying why `bn` must stay."""
        label = f"BatchNormalization {node_label(first)}"
        try:
            inner = batchnorm_params(ctx, first, subject=False)  # first stays: its own map only
        except Refusal as refusal:
            raise Refusal(f"{label} before it cannot be merged: {refusal.reason}") from None
        outer = params.on_axis(ctx.shapes.rank(first.output[0]), 1, inner.channels)
        merged: ChannelAffine = inner.affine.then(outer)
        eps = float(attr(first, "epsilon", 1e-5))
        values = []
        for role, array in (("scale", merged.scale * np.sqrt(1.0 + eps)), ("bias", merged.shift),
                            ("mean", np.zeros(inner.channels)), ("var", np.ones(inner.channels))):
            rounded, problem = emit(array, inner.param_dtype)
            if rounded is None:
                raise Refusal(f"not merged into {label}: {role} {problem}")
            values.append(rounded)

        def apply() -> None:
            for k, (suffix, array) in enumerate(zip(("scale", "bias", "mean", "var"), values), start=1):
                ctx.set_param(first, k, np.ascontiguousarray(array), suffix)
            absorb(ctx.index, bn, first)

        why = ("two BatchNorms in a row" if bn.op_type == "BatchNormalization"
               else f"a per-channel {bn.op_type} after it")
        return Plan(first, apply, note=f"merged into {label} ({why})")
