"""The float16 copy that TensorRT 11's strongly typed fp16 builds read: every float32 value becomes float16 except
where the op's schema fixes float32, and nothing silently becomes inf. Checked with the full checker and run on
ONNX Runtime against the float32 model."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from support.builders import parse, run_ort

from foldnorm.bench.backends.fp16 import to_float16
from foldnorm.errors import FoldnormError


def _half_matches(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    half = to_float16(model)
    onnx.checker.check_model(half, full_check=True)  # every edge has one consistent dtype
    want = run_ort(model, feeds)
    got = run_ort(half, {k: v.astype(np.float16) for k, v in feeds.items()})
    for w, g in zip(want, got):
        assert g.dtype == np.float16 and g.shape == w.shape and np.all(np.isfinite(g))
        assert np.max(np.abs(g.astype(np.float32) - w)) <= 1e-2 * np.max(np.abs(w))
    return half


def test_constant_value_float_and_value_floats_become_float16(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[2, 3] x) => (float[2, 3] y) {
        s = Constant <value_float = 1.75> ()
        t = Constant <value_floats = [0.5, -1.25, 3.0]> ()
        m = Mul (x, s)
        y = Add (m, t)
    }
    """)
    half = _half_matches(model, {"x": rng.normal(0, 1, (2, 3)).astype(np.float32)})
    constants = [n for n in half.graph.node if n.op_type == "Constant"]
    assert [[a.name for a in n.attribute] for n in constants] == [["value"], ["value"]]
    assert {n.attribute[0].t.data_type for n in constants} == {TensorProto.FLOAT16}
    assert model.graph.node[0].attribute[0].name == "value_float", "the input model must not change"


def test_resize_scales_stay_float32_through_a_cast(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[1, 2, 4, 4] x) => (float[1, 2, 8, 8] y) {
        y = Resize <mode = "nearest"> (x, roi, scales)
    }
    """, {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)})
    half = _half_matches(model, {"x": rng.normal(0, 1, (1, 2, 4, 4)).astype(np.float32)})
    cast, resize = half.graph.node
    assert (cast.op_type, cast.input[0], resize.input[2]) == ("Cast", "scales", cast.output[0])
    assert cast.attribute[0].i == TensorProto.FLOAT
    assert resize.input[1] == "roi", "roi accepts float16 and is not cast"


def test_a_float32_only_output_is_cast_to_float16_for_its_consumers(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[2, 3] x) => (float[2, 3] y) {
        w = DequantizeLinear (wq, s, z)
        y = Add (x, w)
    }
    """, {"wq": rng.integers(-100, 100, (2, 3)).astype(np.int8), "s": np.array(0.02, np.float32),
          "z": np.array(3, np.int8)})
    half = _half_matches(model, {"x": rng.normal(0, 1, (2, 3)).astype(np.float32)})
    assert [n.op_type for n in half.graph.node] == ["Cast", "DequantizeLinear", "Cast", "Add"]


@pytest.mark.parametrize(("line", "inits", "named"), [
    ("y = Add (x, big)", {"big": np.array([1.0, 70000.0, -2.0], np.float32)}, "initializer 'big' holds 70000"),
    ("c = Constant <value_float = -1e5> ()\n y = Add (x, c)", {}, "holds 100000"),
    ("c = Constant <value = float[1] {3e38}> ()\n y = Add (x, c)", {}, "Constant 'c' holds 3e+38"),
])
def test_a_value_beyond_float16_range_is_refused_not_made_inf(line: str, inits: dict[str, np.ndarray],
                                                              named: str) -> None:
    model = parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[3] x) => (float[3] y) {{
        {line}
    }}
    """, inits)
    with pytest.raises(FoldnormError, match=f"{re.escape(named)}.*beyond float16's largest value 65504"):
        to_float16(model)


def test_infinities_already_in_the_model_are_kept() -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[3] x) => (float[3] y) {
        y = Max (x, floor)
    }
    """, {"floor": np.array([-np.inf, 0.0, 65504.0], np.float32)})
    half = to_float16(model)
    assert onnx.numpy_helper.to_array(half.graph.initializer[0]).tolist() == [-np.inf, 0.0, 65504.0]
