"""affine-conv: constant per-channel Mul/Add/Sub/Div right before a Conv that pads nothing (alone or chained, as in
onnxscript's affine-conv fusion test) fold into the Conv's input channels; the cases that must not fold."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from support.builders import parse, x_feed
from support.fold_helpers import assert_folds, assert_not_reported, assert_refused, assert_turned_off


def affine_conv_model(rng: np.random.Generator, nodes: str, constants: dict[str, np.ndarray], *,
                      conv: str = "Conv <group = 2, strides = [2, 2]> (a, W, B)", x: str = "float[N, 4, 6, 6] x",
                      out: str = "float[N, 6, 2, 2] y", group: int = 2) -> onnx.ModelProto:
    """x -> r = Relu(x) -> `nodes` (ending in `a`) -> `conv` (weight W [6, 4 / group, 3, 3], bias B) -> y."""
    inits = {"W": rng.normal(0, 0.5, (6, 4 // group, 3, 3)).astype(np.float32),
             "B": rng.normal(0, 0.5, 6).astype(np.float32), **constants}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g ({x}) => ({out}) {{
        r = Relu (x)
        {nodes}
        y = {conv}
    }}
    """, inits)


def per_channel(rng: np.random.Generator, shape: tuple[int, ...] = (4, 1, 1)) -> np.ndarray:
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1, 1], shape)).astype(np.float32)


def test_scalar_scale_and_offset_fold_together_as_in_onnxscripts_test(rng: np.random.Generator) -> None:
    model = affine_conv_model(rng, "m = Mul (r, s)\n        a = Add (m, t)",
                              {"s": np.array([2.0], np.float32), "t": np.array([3.0], np.float32)},
                              conv="Conv (a, W, B)", out="float[N, 6, 4, 4] y", group=1)
    result = assert_folds(model, x_feed(rng), kind="affine", gone="")
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Conv"]
    assert result.report.records[0].reason == "folded into Conv y's input channels, with Add a"


@pytest.mark.parametrize(("nodes", "names"), [
    ("a = Mul (r, s)", ("s",)),
    ("a = Div (r, s)", ("s",)),
    ("a = Add (t, r)", ("t",)),
    ("m = Sub (t, r)\n        d = Div (m, s)\n        a = Mul (d, u)", ("t", "s", "u")),  # (t - x) / s * u
])
def test_per_channel_constants_fold_into_a_grouped_conv(rng: np.random.Generator, nodes: str,
                                                        names: tuple[str, ...]) -> None:
    shapes = {"s": (4, 1, 1), "t": (1, 4, 1, 1), "u": (1,)}
    model = affine_conv_model(rng, nodes, {name: per_channel(rng, shapes[name]) for name in names})
    result = assert_folds(model, x_feed(rng), kind="affine", gone="")
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Conv"]


def test_a_tail_folds_into_the_conv_before_it_first(rng: np.random.Generator) -> None:
    inits = {"V": rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), "s": per_channel(rng),
             "W": rng.normal(0, 0.5, (6, 4, 1, 1)).astype(np.float32)}
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 6, 6, 6] y) {
        c = Conv (x, V)
        a = Mul (c, s)
        y = Conv (a, W)
    }
    """, inits)
    result = assert_folds(model, x_feed(rng), kind="affine", gone="Mul")
    assert result.report.records[0].target == "a", "the Conv before it, which now writes `a`"


PADDED = {"conv": "Conv <group = 2, pads = [1, 1, 1, 1]> (a, W, B)", "out": "float[N, 6, 6, 6] y"}


def test_a_scale_alone_folds_into_a_padded_conv(rng: np.random.Generator) -> None:
    # Zero padding commutes with a scale: pad(x * s) = pad(x) * s (a written-out GELU's last `* 0.5`, a `/ 255`).
    model = affine_conv_model(rng, "m = Div (r, s)\n        a = Mul (m, u)",
                              {"s": per_channel(rng), "u": np.array(0.5, np.float32)}, **PADDED)
    assert_folds(model, x_feed(rng), kind="affine", gone="")


def test_a_shift_before_a_padded_conv_is_refused(rng: np.random.Generator) -> None:
    model = affine_conv_model(rng, "m = Mul (r, s)\n        a = Add (m, t)",
                              {"s": per_channel(rng), "t": per_channel(rng)}, **PADDED)
    assert_refused(model, "Conv y pads its input (pads=[1, 1, 1, 1]): zero-padding x * s + t is not zero-padding x")


def test_a_constant_that_widens_the_input_by_broadcasting_is_refused(rng: np.random.Generator) -> None:
    # x has 1 channel: Mul by a [4, 1, 1] constant makes 4 of it, and the Conv reads 4 channels.
    model = affine_conv_model(rng, "a = Mul (r, s)", {"s": per_channel(rng)}, x="float[N, 1, 6, 6] x")
    assert_refused(model, "its input is not provably of Conv y's rank 4 with its 4 input channels on axis 1")


def test_a_constant_along_another_axis_is_refused(rng: np.random.Generator) -> None:
    model = affine_conv_model(rng, "a = Mul (r, s)", {"s": per_channel(rng, (1, 1, 1, 6))})
    assert_refused(model, "it acts on axis 3 of 4")


def test_a_chain_link_that_is_no_per_channel_map_is_refused(rng: np.random.Generator) -> None:
    model = affine_conv_model(rng, "m = Mul (r, s)\n        a = Add (m, t)",
                              {"s": per_channel(rng), "t": per_channel(rng, (4, 6, 1))})
    result = assert_refused(model, "Add a after it: its constant of shape [4, 6, 1] varies along several axes")
    assert len(result.report.records) == 2, "the Mul (whose chain fails) and the Add"


def test_nodes_not_leading_to_a_conv_get_no_record(rng: np.random.Generator) -> None:
    model = affine_conv_model(rng, "m = Mul (r, s)\n        a = Relu (m)", {"s": per_channel(rng)})
    assert_not_reported(model)


def test_the_end_of_a_written_out_gelu_is_left_to_the_runtime(rng: np.random.Generator) -> None:
    # x * (1 + erf(x / sqrt 2)) * 0.5 before a Conv: ONNX Runtime fuses the whole GELU; folding the 0.5 breaks that.
    gelu = """d = Div (r, k)
        e = Erf (d)
        one_e = Add (e, o)
        p = Mul (r, one_e)
        a = Mul (p, h)"""
    constants = {"k": np.array(1.4142135, np.float32), "o": np.array(1.0, np.float32), "h": np.array(0.5, np.float32)}
    assert_not_reported(affine_conv_model(rng, gelu, constants))
    scaled = affine_conv_model(rng, "p = Mul (r, r)\n        q = Mul (p, h)\n        a = Mul (q, s)",
                               {"h": np.array(0.5, np.float32), "s": per_channel(rng)})
    assert_not_reported(scaled)


def test_skip_affine_conv_keeps_the_nodes_and_says_so(rng: np.random.Generator) -> None:
    assert_turned_off(affine_conv_model(rng, "a = Mul (r, s)", {"s": per_channel(rng)}), "affine-conv",
                      kind="affine")
