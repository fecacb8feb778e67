"""affine-tail: a Mul/Add/Sub/Div by a per-channel constant after a linear op, folded as a BatchNorm would be;
constants that are not per-channel, and the look-alikes (attention scale, GELU pieces) that get no record."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import parse, x_feed
from support.fold_helpers import assert_folds, assert_not_reported, assert_refused, assert_turned_off

from foldnorm import FoldOptions


def test_affine_tail_after_conv_folds(rng: np.random.Generator) -> None:
    c = 4
    inits = {"W": rng.normal(0, 0.5, (c, 4, 3, 3)).astype(np.float32),
             "m": rng.uniform(0.5, 2, (c, 1, 1)).astype(np.float32),
             "a": rng.normal(0, 1, (1, c, 1, 1)).astype(np.float32),
             "s": rng.normal(0, 1, (c, 1, 1)).astype(np.float32),
             "d": rng.uniform(0.5, 2, (1, c, 1, 1)).astype(np.float32),
             "k": np.array(1.7, np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 4, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        h1 = Mul (m, c)
        h2 = Add (h1, a)
        h3 = Sub (s, h2)
        h4 = Div (h3, d)
        y = Mul (h4, k)
    }
    """, inits)
    result = assert_folds(model, x_feed(rng), kind="affine", gone="", folded=5)
    assert [n.op_type for n in result.model.graph.node] == ["Conv"]


def conv_then(rng: np.random.Generator, line: str, shape: tuple[int, ...], out: str = "float[N, 6, 6, 6]"
              ) -> onnx.ModelProto:
    """Conv `c` (4 -> 6 channels, 6x6) then `line`, which reads `c` and a random constant `m` of `shape`."""
    inits = {"W": rng.normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32),
             "m": rng.uniform(0.5, 2, shape).astype(np.float32)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => ({out} y) {{
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        {line}
    }}
    """, inits)


def test_constant_on_another_axis_with_channel_length_is_not_folded(rng: np.random.Generator) -> None:
    # 6 channels and width 6: a [6] constant broadcasts along the width, not the channels.
    model = conv_then(rng, "y = Mul (c, m)", (6,))
    result = assert_refused(model, "acts on axis 3 of 4, not on the producer's output-channel axis 1")
    assert result.report.records[0].kind == "affine"


@pytest.mark.parametrize(("shape", "out", "reason"), [
    ((6, 1, 6), "float[N, 6, 6, 6]", "varies along several axes"),
    ((1, 1, 6, 1, 1), "float[1, N, 6, 6, 6]", "more than the tensor's rank"),
])
def test_constant_that_is_not_per_channel_is_not_folded(rng: np.random.Generator, shape: tuple[int, ...], out: str,
                                                        reason: str) -> None:
    assert_refused(conv_then(rng, "y = Add (c, m)", shape, out), reason)


def test_division_by_a_variable_is_left_alone(rng: np.random.Generator) -> None:
    assert_not_reported(conv_then(rng, "y = Div (m, c)", (6, 1, 1)))


def test_attention_scale_after_dynamic_matmul_is_not_reported(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 4] q, float[N, 4, 3] k) => (float[N, 3, 3] y) {
        s = MatMul (q, k)
        d = Constant <value = float {2.0}> ()
        y = Div (s, d)
    }
    """)
    assert_not_reported(model)


def test_constant_op_on_a_shared_linear_output_is_not_reported(rng: np.random.Generator) -> None:
    # GELU written out: Linear output x feeds both x * 0.5 and erf(x / sqrt(2)); neither is an affine tail.
    inits = {"W": rng.normal(0, 0.5, (5, 4)).astype(np.float32), "b": rng.normal(0, 0.5, 4).astype(np.float32),
             "half": np.array(0.5, np.float32), "root2": np.array(1.4142135, np.float32),
             "one": np.array(1.0, np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 5] x) => (float[N, 4] y) {
        m = MatMul (x, W)
        h = Add (m, b)
        d = Div (h, root2)
        e = Erf (d)
        p = Add (e, one)
        q = Mul (h, half)
        y = Mul (q, p)
    }
    """, inits)
    assert_not_reported(model)


def test_skip_affine_tail_keeps_the_mul_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(conv_then(rng, "y = Mul (c, m)", (6, 1, 1)), "affine-tail", kind="affine")


def test_a_tail_after_a_conv_names_the_conv_rule_when_that_is_off(rng: np.random.Generator) -> None:
    model = conv_then(rng, "y = Mul (c, m)", (6, 1, 1))
    result = assert_refused(model, "rule conv-bn is turned off (--skip conv-bn)", options=FoldOptions(skip="conv-bn"))
    assert [r.kind for r in result.report.records] == ["affine"]


def test_skip_affine_tail_leaves_look_alikes_unreported(rng: np.random.Generator) -> None:
    assert_not_reported(conv_then(rng, "y = Div (m, c)", (6, 1, 1)), FoldOptions(skip=("affine-tail",)))
