"""bn-bn: a BatchNormalization after another one with nothing linear before it, merged into the first."""

from __future__ import annotations

import numpy as np
import onnx
from support.builders import assert_close, bn_inputs, bn_params, parse, run_ort, x_feed
from support.fold_helpers import assert_turned_off, checked_fold


def bn_bn_model(rng: np.random.Generator) -> onnx.ModelProto:
    inits = {**bn_params("a", 4, rng), **bn_params("b", 4, rng)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {{
        h = BatchNormalization <epsilon = 0.2> (x, {bn_inputs("a")})
        y = BatchNormalization (h, {bn_inputs("b")})
    }}
    """, inits)


def test_standalone_bn_bn_merges(rng: np.random.Generator) -> None:
    model = bn_bn_model(rng)
    result = checked_fold(model)
    outcomes = [(r.node, r.outcome) for r in result.report.records]
    assert outcomes == [("h", "kept"), ("y", "folded")]
    assert "merged" in result.report.records[1].reason
    x = x_feed(rng)
    assert_close(run_ort(model, x), run_ort(result.model, x))


def test_skip_bn_bn_keeps_both_and_says_so(rng: np.random.Generator) -> None:
    result = assert_turned_off(bn_bn_model(rng), "bn-bn")
    assert [(r.node, r.outcome) for r in result.report.records] == [("h", "kept"), ("y", "skipped")]
