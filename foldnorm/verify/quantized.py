"""Tolerances for quantized (QDQ) models: errors counted in steps of each output's quantizer.

Folding a BatchNorm in a QDQ model may move an activation's quantization point (`fold.quantized`): values
that sat near a rounding boundary then round the other way, and the flip travels to the outputs as whole
quantization steps. So a quantized reference (any Q/DQ node) is compared in steps: an output produced by a per-tensor
`DequantizeLinear` has that quantizer's scale as its step; any other output of a quantized model gets an
int8 step of its own range (`max |reference| / 127`). An element fails when it is more than `QDQ_STEPS`
steps away, and an output fails when more than `QDQ_OUTLIERS` of its elements (at least one) fail: where an
input drives an activation past its calibrated range, the dropped quantizer clipped it in the reference and no
longer does in the folded model, which is then closer to the float model by more than a few steps.
"""

from __future__ import annotations

import numpy as np
import onnx

from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex, is_onnx_op

#: how many output quantization steps a folded QDQ model may differ by (measured: README "INT8 (QDQ) models").
QDQ_STEPS = 4.0
#: the fraction of an output's elements that may differ by more (inputs beyond the calibrated range).
QDQ_OUTLIERS = 0.01


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the main graph holds QuantizeLinear or DequantizeLinear nodes (activations or weights: a fold
    under `requantize` moves quantized weights by up to half a step)."""
    return any(is_onnx_op(n, "QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def output_steps(model: onnx.ModelProto) -> dict[str, float]:
    """The quantization step of each output that a DequantizeLinear with a constant per-tensor scale produces."""
    index = GraphIndex(model.graph)
    constants = ConstantResolver(index)
    steps: dict[str, float] = {}
    for name in index.graph_outputs:
        dq = index.producer.get(name)
        scale = constants.value(dq.input[1]) if dq is not None and is_onnx_op(dq, "DequantizeLinear") else None
        if scale is not None and scale.size == 1:
            steps[name] = float(scale.reshape(-1)[0])
    return steps


def step_tolerance(step: float | None, references: list[np.ndarray]) -> tuple[float, float]:
    """(rtol, atol) allowing `QDQ_STEPS` steps (`step`, or an int8 step of the references' range when None)."""
    if step is None:
        finite = [np.abs(r[np.isfinite(r)]) for r in references]
        peak = max((float(f.max()) for f in finite if f.size), default=0.0)
        step = peak / 127
    return 0.0, QDQ_STEPS * step


def outliers_allowed(total: int) -> int:
    """How many of an output's `total` elements may be beyond `QDQ_STEPS` steps: `QDQ_OUTLIERS` of them, at
    least one."""
    return max(1, int(total * QDQ_OUTLIERS))
