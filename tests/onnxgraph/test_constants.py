"""The constant resolver, op by op: each graph's `y` is computed by the resolver and by ONNX Runtime (the same
graph, optimizations disabled), and the two must agree exactly in dtype, shape and value. Then the values it
must not call constant: graph inputs, dynamic shapes, attribute references, unknown ops, too deep a chain."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper
from support.builders import parse, run_ort

from foldnorm.onnxgraph.constants import _MAX_DEPTH, ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex
from foldnorm.onnxgraph.inputs import make_feeds

_rng = np.random.default_rng(42)
W234 = _rng.normal(0, 2.0, (2, 3, 4)).astype(np.float32)
W23 = _rng.normal(0, 2.0, (2, 3)).astype(np.float32)
W31 = _rng.normal(0, 2.0, (3, 1)).astype(np.float32)
W21 = _rng.normal(0, 2.0, (2, 1)).astype(np.float32)
W3 = _rng.normal(0, 2.0, 3).astype(np.float32)
POS23 = _rng.uniform(0.1, 9.0, (2, 3)).astype(np.float32)
I23 = _rng.integers(-20, 20, (2, 3)).astype(np.int64)
NZ3 = np.array([3, -2, 7], dtype=np.int64)
DYADIC23 = np.array([[1.5, -2.25, 4.0], [0.5, 3.0, -1.25]], np.float32)  # means exact in float32: no rounding doubt
Q8 = _rng.integers(-128, 128, (2, 3)).astype(np.int8)
QU8 = _rng.integers(0, 256, (2, 3)).astype(np.uint8)
Q32 = _rng.integers(-(2**31), 2**31 - 1, (2, 3)).astype(np.int32)
SCALE2 = np.array([0.02, 0.7], dtype=np.float32)
ZERO2 = np.array([3, -5], dtype=np.int8)
TIES23 = np.array([[0.5, 1.5, -2.5], [1000.0, -1000.0, 0.25]], dtype=np.float32)  # halves round to even; clipping
BIG23 = np.array([[2**62 + 1, -(2**62) - 3, 2**53 + 1], [-7, 7, -9]], dtype=np.int64)  # beyond float64's integers


def model(signature: str, body: str, inits: dict[str, np.ndarray] | None = None, opset: int = 18) -> onnx.ModelProto:
    return parse(f'<ir_version: 8, opset_import: ["" : {opset}]>\ng {signature} {{\n{body}\n}}', inits)


def resolved(m: onnx.ModelProto, name: str = "y") -> np.ndarray | None:
    return ConstantResolver(GraphIndex(m.graph)).value(name)


# (signature, body, initializers, opset)
CASES = {
    "Constant value": ("() => (float[2, 3] y)", "y = Constant <value = float[2, 3] {1, 2, 3, 4, 5, 6}> ()", {}, 18),
    "Constant value_float": ("() => (float y)", "y = Constant <value_float = 2.5> ()", {}, 18),
    "Constant value_floats": ("() => (float[2] y)", "y = Constant <value_floats = [1.5, -2.0]> ()", {}, 18),
    "Constant value_int": ("() => (int64 y)", "y = Constant <value_int = 7> ()", {}, 18),
    "Constant value_ints": ("() => (int64[3] y)", "y = Constant <value_ints = [3, -1, 4]> ()", {}, 18),
    "Identity": ("() => (float[2, 3] y)", "y = Identity (w)", {"w": W23}, 18),
    "Cast float to int32": ("() => (int32[2, 3] y)", "y = Cast <to = 6> (w)", {"w": W23}, 18),
    "Cast float to float16": ("() => (float16[2, 3] y)", "y = Cast <to = 10> (w)", {"w": W23}, 18),
    "Cast float to bool": ("() => (bool[2, 3] y)", "y = Cast <to = 9> (w)", {"w": W23.round()}, 18),
    "Cast int64 to double": ("() => (double[2, 3] y)", "y = Cast <to = 11> (w)", {"w": I23}, 18),
    "CastLike of an initializer": ("() => (int64[2, 3] y)", "y = CastLike (w, like)",
                                   {"w": W23, "like": np.zeros(1, np.int64)}, 18),
    "CastLike of a graph input's type": ("(float16[N, 2] x) => (float16[2, 3] y)", "y = CastLike (w, x)",
                                         {"w": W23}, 18),
    "Expand": ("() => (float[2, 3, 4] y)", """s = Constant <value = int64[3] {2, 1, 4}> ()
        y = Expand (w, s)""", {"w": W31}, 18),
    "Expand to a lower rank": ("() => (float[2, 3] y)", """s = Constant <value = int64[1] {3}> ()
        y = Expand (w, s)""", {"w": W23}, 18),
    "Reshape with 0 and -1": ("() => (float[2, 12] y)", """s = Constant <value = int64[2] {0, -1}> ()
        y = Reshape (w, s)""", {"w": W234}, 18),
    "Reshape allowzero": ("() => (float[0, 3] y)", """s = Constant <value = int64[2] {0, 3}> ()
        y = Reshape <allowzero = 1> (w, s)""", {"w": np.zeros((2, 0, 3), np.float32)}, 18),
    "Unsqueeze axes input": ("() => (float[1, 2, 3, 1] y)", """a = Constant <value = int64[2] {0, -1}> ()
        y = Unsqueeze (w, a)""", {"w": W23}, 18),
    "Unsqueeze axes attribute (opset 11)": ("() => (float[2, 1, 3] y)", "y = Unsqueeze <axes = [1]> (w)",
                                            {"w": W23}, 11),
    "Squeeze axes input": ("() => (float[3] y)", """a = Constant <value = int64[2] {0, -1}> ()
        y = Squeeze (w, a)""", {"w": W3.reshape(1, 3, 1)}, 18),
    "Squeeze every unit axis": ("() => (float[3] y)", "y = Squeeze (w)", {"w": W3.reshape(1, 3, 1)}, 18),
    "Squeeze axes attribute (opset 11)": ("() => (float[3, 1] y)", "y = Squeeze <axes = [0]> (w)",
                                          {"w": W3.reshape(1, 3, 1)}, 11),
    "Concat negative axis": ("() => (float[2, 4] y)", "y = Concat <axis = -1> (a, b)", {"a": W23, "b": W21}, 18),
    "Concat three on axis 0": ("() => (float[5, 3] y)", "y = Concat <axis = 0> (a, b, a)",
                               {"a": W23, "b": W3.reshape(1, 3)}, 18),
    "Transpose perm": ("() => (float[4, 2, 3] y)", "y = Transpose <perm = [2, 0, 1]> (w)", {"w": W234}, 18),
    "Transpose default perm": ("() => (float[4, 3, 2] y)", "y = Transpose (w)", {"w": W234}, 18),
    "Flatten default axis": ("() => (float[2, 12] y)", "y = Flatten (w)", {"w": W234}, 18),
    "Flatten axis 0": ("() => (float[1, 24] y)", "y = Flatten <axis = 0> (w)", {"w": W234}, 18),
    "Flatten negative axis": ("() => (float[6, 4] y)", "y = Flatten <axis = -1> (w)", {"w": W234}, 18),
    "Flatten axis = rank": ("() => (float[24, 1] y)", "y = Flatten <axis = 3> (w)", {"w": W234}, 18),
    "Shape of an initializer": ("() => (int64[3] y)", "y = Shape (w)", {"w": W234}, 18),
    "Shape start and negative end": ("() => (int64[1] y)", "y = Shape <start = 1, end = -1> (w)", {"w": W234}, 18),
    "Shape of a computed constant": ("() => (int64[2] y)", """t = Transpose (w)
        y = Shape (t)""", {"w": W23}, 18),
    "Shape of a graph input, static part": ("(float[N, 3, 5] x) => (int64[2] y)", "y = Shape <start = 1> (x)",
                                            {}, 18),
    "ConstantOfShape default": ("() => (float[2, 3] y)", """s = Constant <value = int64[2] {2, 3}> ()
        y = ConstantOfShape (s)""", {}, 18),
    "ConstantOfShape int64 fill": ("() => (int64[2, 3, 4] y)", """s = Shape (w)
        y = ConstantOfShape <value = int64[1] {7}> (s)""", {"w": W234}, 18),
    "ConstantOfShape scalar": ("() => (float y)", """s = Constant <value = int64[0] {}> ()
        y = ConstantOfShape <value = float[1] {2.5}> (s)""", {}, 18),
    "ReduceMean axes input, keepdims 0": ("() => (float[2] y)", """a = Constant <value = int64[1] {-1}> ()
        y = ReduceMean <keepdims = 0> (w, a)""", {"w": DYADIC23}, 18),
    "ReduceMean axes attribute (opset 17)": ("() => (float[1, 3] y)", "y = ReduceMean <axes = [0]> (w)",
                                             {"w": DYADIC23}, 17),
    "ReduceMean over every axis": ("() => (float[1, 1] y)", "y = ReduceMean (w)", {"w": DYADIC23}, 18),
    "ReduceMean noop with empty axes": ("() => (float[2, 3] y)", "y = ReduceMean <noop_with_empty_axes = 1> (w)",
                                        {"w": DYADIC23}, 18),
    "Add broadcast": ("() => (float[2, 3] y)", "y = Add (a, b)", {"a": W23, "b": W3}, 18),
    "Sub": ("() => (float[2, 3] y)", "y = Sub (a, b)", {"a": W23, "b": POS23}, 18),
    "Mul int64": ("() => (int64[2, 3] y)", "y = Mul (a, b)", {"a": I23, "b": NZ3}, 18),
    "Div float": ("() => (float[2, 3] y)", "y = Div (a, b)", {"a": W23, "b": POS23}, 18),
    "Div int64 truncates toward zero": ("() => (int64[2, 3] y)", "y = Div (a, b)", {"a": I23, "b": NZ3}, 18),
    "Div int64 exact beyond 2**53": ("() => (int64[2, 3] y)", "y = Div (a, b)", {"a": BIG23, "b": NZ3}, 18),
    "Sqrt": ("() => (float[2, 3] y)", "y = Sqrt (w)", {"w": POS23}, 18),
    "Reciprocal": ("() => (float[2, 3] y)", "y = Reciprocal (w)", {"w": W23}, 18),
    "Neg": ("() => (float[2, 3] y)", "y = Neg (w)", {"w": W23}, 18),
    "DequantizeLinear int8 per tensor": ("() => (float[2, 3] y)", "y = DequantizeLinear (q, s, z)",
                                         {"q": Q8, "s": np.array(0.05, np.float32), "z": np.array(-7, np.int8)}, 18),
    "DequantizeLinear uint8, no zero point (opset 10)": ("() => (float[2, 3] y)", "y = DequantizeLinear (q, s)",
                                                          {"q": QU8, "s": np.array(0.3, np.float32)}, 10),
    "DequantizeLinear int8 per axis 0": ("() => (float[2, 3] y)", "y = DequantizeLinear <axis = 0> (q, s, z)",
                                         {"q": Q8, "s": SCALE2, "z": ZERO2}, 18),
    "DequantizeLinear int32 bias": ("() => (float[2, 3] y)", "y = DequantizeLinear (q, s)",
                                    {"q": Q32, "s": np.array(3e-5, np.float32)}, 13),
    "QuantizeLinear to int8, ties to even, saturating": ("() => (int8[2, 3] y)", "y = QuantizeLinear (w, s, z)",
                                                         {"w": TIES23, "s": np.array(1.0, np.float32),
                                                          "z": np.array(0, np.int8)}, 18),
    "QuantizeLinear to uint8 without a zero point": ("() => (uint8[2, 3] y)", "y = QuantizeLinear (w, s)",
                                                     {"w": W23, "s": np.array(0.03, np.float32)}, 13),
    "QuantizeLinear per axis 0": ("() => (int8[2, 3] y)", "y = QuantizeLinear <axis = 0> (w, s, z)",
                                  {"w": W23, "s": SCALE2, "z": ZERO2}, 18),
    # a QAT export's weight: QuantizeLinear then DequantizeLinear of a float initializer
    "QuantizeLinear then DequantizeLinear": ("() => (float[2, 3] y)", """q = QuantizeLinear <axis = 0> (w, s, z)
        y = DequantizeLinear <axis = 0> (q, s, z)""", {"w": W23, "s": SCALE2, "z": ZERO2}, 13),
    # the raw dynamo exporter's zero bias of a bias-less conv: Expand(CastLike(0, W), Shape(W)[0:1])
    "dynamo zero bias": ("() => (float[2] y)", """zero = Constant <value_int = 0> ()
        z = CastLike (zero, w)
        s = Shape <start = 0, end = 1> (w)
        y = Expand (z, s)""", {"w": W234}, 18),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_resolver_matches_onnx_runtime(case: tuple[str, str, dict[str, np.ndarray], int]) -> None:
    signature, body, inits, opset = case
    m = model(signature, body, inits, opset)
    got = resolved(m)
    (want,) = run_ort(m, make_feeds(m, 2, 0))
    assert got is not None, "the resolver found no constant"
    assert (got.dtype, got.shape) == (want.dtype, want.shape)
    np.testing.assert_array_equal(got, want)


def test_every_evaluated_op_has_a_case() -> None:
    from foldnorm.onnxgraph.constants import _ELEMENTWISE, _OPS

    covered = {line.split(" = ")[1].split()[0] for _, body, _, _ in CASES.values() for line in body.splitlines()}
    assert {*_OPS, *_ELEMENTWISE, "Constant", "CastLike", "Shape", "ConstantOfShape"} <= covered


def test_values_of_an_enclosing_graph() -> None:
    c = _rng.normal(0, 1, 3).astype(np.float32)
    m = model("(bool cond) => (float[3] y)", """y = If (cond) <
            then_branch = g1 () => (float[3] t) { t = Neg (c) },
            else_branch = g2 () => (float[3] e) { e = Identity (c) }>""", {"c": c})
    outer = GraphIndex(m.graph)
    if_node = m.graph.node[0]
    branch = GraphIndex(if_node.attribute[0].g, outer=outer)
    got = ConstantResolver(branch, ConstantResolver(outer)).value("t")
    (want,) = run_ort(m, {"cond": np.array(True)})
    assert got is not None
    np.testing.assert_array_equal(got, want)
    assert ConstantResolver(branch).value("t") is None, "without the outer resolver `c` is unknown"


def test_graph_inputs_are_not_constants() -> None:
    m = model("(float[N, 3] x) => (float[N, 3] y)", "y = Add (x, w)", {"w": W3})
    assert resolved(m) is None and resolved(m, "x") is None
    assert resolved(m, "") is None and resolved(m, "nothing") is None


def test_an_initializer_that_is_also_a_graph_input_is_not_a_constant() -> None:
    m = model("() => (float[3] y)", "y = Neg (w)", {"w": W3})
    assert resolved(m) is not None
    m.graph.input.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [3]))  # IR < 4: overridable
    assert resolved(m) is None


def test_shape_of_a_dynamic_dim_is_not_a_constant() -> None:
    m = model("(float[N, 3] x) => (int64[2] y)", "y = Shape (x)")
    assert resolved(m) is None


def test_unknown_ops_custom_domains_and_multi_output_nodes_are_not_evaluated() -> None:
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 18, "custom" : 1]>
    g () => (float[3] relu, float[3] custom, float[1] first) {
        relu = Relu (w)
        custom = custom.Neg (w)
        first, rest = Split <num_outputs = 2> (w4)
    }
    """)
    m.graph.initializer.extend([onnx.numpy_helper.from_array(W3, "w"),
                                onnx.numpy_helper.from_array(np.arange(2, dtype=np.float32), "w4")])
    for name in ("relu", "custom", "first"):
        assert resolved(m, name) is None, name


def test_values_numpy_cannot_compute_are_not_constants() -> None:
    m = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    g () => (float[2] y) {
        s = Constant <value = int64[1] {2}> ()
        y = Expand (w, s)
    }
    """)  # shape [2] does not broadcast with w's [3]: invalid, but the resolver must say "unknown", not raise
    m.graph.initializer.append(onnx.numpy_helper.from_array(W3, "w"))
    assert resolved(m) is None


def test_attribute_references_are_not_constants() -> None:
    """A node inside a function whose attribute is the caller's (`<axis: int = @axis>`) has no value yet."""
    concat = helper.make_node("Concat", ["a", "b"], ["y"])
    axis = onnx.AttributeProto(name="axis", ref_attr_name="axis", type=onnx.AttributeProto.INT)
    concat.attribute.append(axis)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["a"], value_ints=[1]), helper.make_node("Constant", [], ["b"],
                                                                                   value_ints=[2]), concat],
        "body", [], [helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [2])])
    resolver = ConstantResolver(GraphIndex(graph))
    assert resolver.value("a") is not None and resolver.value("y") is None


def _identity_chain(length: int) -> onnx.ModelProto:
    body = "\n".join(f"v{i + 1} = Identity (v{i})" for i in range(length - 1))
    return model("() => (float[3] y)", f"{body}\ny = Identity (v{length - 1})", {"v0": W3})


def test_chains_deeper_than_the_limit_are_not_evaluated() -> None:
    np.testing.assert_array_equal(resolved(_identity_chain(_MAX_DEPTH + 1)), W3)
    assert resolved(_identity_chain(_MAX_DEPTH + 2)) is None


def test_forget_drops_a_cached_value_after_an_edit() -> None:
    m = model("() => (float[3] y)", "y = Neg (w)", {"w": W3})
    index = GraphIndex(m.graph)
    resolver = ConstantResolver(index)
    np.testing.assert_array_equal(resolver.value("y"), -W3)
    index.overwrite_initializer("w", W3 * 2)
    np.testing.assert_array_equal(resolver.value("y"), -W3)  # cached until forgotten
    resolver.forget("y")
    resolver.forget("w")
    np.testing.assert_array_equal(resolver.value("y"), -2 * W3)
