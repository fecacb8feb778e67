"""Lowering a BatchNormalization with nothing to fold into to one Mul and one Add (`--standalone-bn affine`).

    Y = X * s' + t'      s', t': shape [C, 1, ..., 1] (rank - 1 dims), in X's dtype

The constants are precomputed in float64 and rounded once to the dtype of X (BatchNormalization-15 allows
fp16 X with fp32 parameters: the constants follow X).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from foldnorm.fold.bn_math import emit
from foldnorm.fold.context import FoldContext
from foldnorm.fold.rules.base import AloneRule, ChannelParams, Plan, Refusal
from foldnorm.fold.rules.common import require_numpy_broadcasting
from foldnorm.onnxgraph.graph import node_label

if TYPE_CHECKING:
    from foldnorm.fold.options import FoldOptions


class BatchNormAffine(AloneRule):
    """Lower a BatchNormalization that nothing took to one Mul and one Add."""

    name = "bn-affine"
    summary = "BN with nothing to fold into, under --standalone-bn affine: one Mul and one Add"
    op_types = ("BatchNormalization",)

    def wanted(self, options: FoldOptions) -> bool:
        """Only when asked for: `standalone_bn="affine"` (`--standalone-bn affine`)."""
        return options.standalone_bn == "affine"

    def check(self, ctx: FoldContext, bn: onnx.NodeProto, params: ChannelParams) -> Plan:
        """A plan replacing `bn` by Mul + Add; raises `Refusal` when it cannot be lowered."""
        require_numpy_broadcasting(ctx, "Mul and Add by [C, 1, ...] constants")
        x = bn.input[0]
        rank = ctx.shapes.rank(x)
        if rank is None or rank < 2:
            raise Refusal("standalone and cannot be lowered to Mul+Add: the rank of its input is not recorded")
        elem = ctx.shapes.elem_type(x)
        if elem is None:
            raise Refusal("standalone and cannot be lowered to Mul+Add: the dtype of its input is not recorded")
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        shape = (params.channels, *([1] * (rank - 2)))
        constants = []
        for role, values in (("scale", params.affine.scale), ("shift", params.affine.shift)):
            rounded, problem = emit(values.reshape(shape), dtype)
            if rounded is None:
                raise Refusal(f"standalone and cannot be lowered to Mul+Add: {role} {problem}")
            constants.append(np.ascontiguousarray(rounded))

        def apply() -> None:
            index = ctx.index
            base = node_label(bn).replace("/", ".").strip(".")
            scale = index.add_initializer(f"{base}.affine_scale", constants[0])
            shift = index.add_initializer(f"{base}.affine_shift", constants[1])
            scaled = index.fresh_name(f"{base}.scaled")
            mul = helper.make_node("Mul", [x, scale], [scaled], name=f"{bn.name}_mul" if bn.name else "")
            add = helper.make_node("Add", [scaled, shift], [bn.output[0]], name=bn.name)
            for node in (mul, add):
                node.metadata_props.extend(bn.metadata_props)
            params_in = list(bn.input[1:])
            index.insert_before(bn, [mul, add])
            index.remove_node(bn)
            index.remove_if_dead(params_in)

        return Plan(bn, apply, note="standalone: lowered to Mul + Add with precomputed constants")
