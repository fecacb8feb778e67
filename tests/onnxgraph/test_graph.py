"""GraphIndex: who produces and who reads each value (subgraphs included), types and shapes, fresh names, and
the edits the fold rules make, checked by onnx.checker and ONNX Runtime after `commit`."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from support.builders import parse, run_ort

from foldnorm.onnxgraph.graph import GraphIndex, free_names

W = np.array([0.5, -1.5, 2.0], dtype=np.float32)


@pytest.fixture
def branchy() -> onnx.ModelProto:
    """x*w -> Relu -> Add; an If whose branches read `w` and `c` of the main graph (one through a nested If)."""
    return parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3] x, bool cond) => (float[N, 3] y, float[N, 3] r, float[N, 3] z) {
        c = Mul (x, w)
        r = Relu (c)
        y = Add (r, c)
        z = If (cond) <
            then_branch = g1 () => (float[N, 3] t) {
                t = If (cond) <
                    then_branch = g3 () => (float[N, 3] u) { u = Neg (c) },
                    else_branch = g4 () => (float[N, 3] v) { v = Identity (c) }>
            },
            else_branch = g2 () => (float[N, 3] e) { one = Constant <value = float {1.0}> ()
                                                      e = Add (c, one) }>
    }
    """, {"w": W})


def node(index: GraphIndex, op: str) -> onnx.NodeProto:
    return next(n for n in index.nodes if n.op_type == op)


def branch(index: GraphIndex, name: str = "then_branch") -> GraphIndex:
    if_node = node(index, "If")
    return GraphIndex(next(a.g for a in if_node.attribute if a.name == name), outer=index, path="main/If")


def test_producers_consumers_uses(branchy: onnx.ModelProto) -> None:
    index = GraphIndex(branchy.graph)
    assert index.producer["c"].op_type == "Mul" and "x" not in index.producer
    # one entry per read: the If once for each branch that reads c (as Mul(x, x) would list Mul twice)
    assert [n.op_type for n in index.consumers["c"]] == ["Relu", "Add", "If", "If"]
    assert [n.op_type for n in index.consumers["w"]] == ["Mul"]
    assert index.uses("c") == 4
    assert index.uses("r") == 2, "read by Add, and a graph output"
    assert index.uses("y") == 1 and index.uses("nothing") == 0
    assert index.only_consumer("x") is node(index, "Mul")
    assert index.only_consumer("c") is None and index.only_consumer("r") is None  # many readers; graph output
    assert index.consumers["cond"] == [node(index, "If")] * 2, "its input, and read inside its then-branch"
    assert index.only_consumer("cond") is None


def test_free_names_of_subgraphs(branchy: onnx.ModelProto) -> None:
    index = GraphIndex(branchy.graph)
    then_graph, else_graph = (a.g for a in node(index, "If").attribute)
    assert free_names(then_graph) == {"cond", "c"}, "read by the nested If and its branches"
    assert free_names(else_graph) == {"c"}, "`one` is defined inside"
    passthrough = helper.make_graph([], "p", [], [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None)])
    assert free_names(passthrough) == {"c"}, "a graph output taken from the enclosing scope"


def test_graph_inputs_and_initializers_across_scopes(branchy: onnx.ModelProto) -> None:
    index = GraphIndex(branchy.graph)
    inner = branch(index)
    assert index.is_graph_input("x") and inner.is_graph_input("x")
    assert not index.is_graph_input("w") and not inner.is_graph_input("w")
    assert not inner.is_graph_input("t") and not inner.is_graph_input("nothing")
    assert index.local_initializer("w") is index.initializers["w"]
    branchy.graph.input.append(helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [3]))  # IR < 4 style
    overridable = GraphIndex(branchy.graph)
    assert overridable.is_graph_input("w") and overridable.local_initializer("w") is None


def test_elem_type_and_shape(branchy: onnx.ModelProto) -> None:
    index = GraphIndex(branchy.graph)
    inner = branch(index, "else_branch")
    assert index.elem_type("x") == onnx.TensorProto.FLOAT and index.elem_type("cond") == onnx.TensorProto.BOOL
    assert index.elem_type("w") == onnx.TensorProto.FLOAT
    assert index.elem_type("c") is None, "no value_info recorded"
    assert inner.elem_type("one") == onnx.TensorProto.FLOAT, "from the Constant that makes it"
    assert inner.elem_type("x") == onnx.TensorProto.FLOAT, "from the enclosing graph"
    assert index.shape("x") == ["N", 3] and index.shape("w") == [3]
    assert index.shape("c") is None and inner.shape("x") == ["N", 3] and inner.shape("one") is None
    branchy.graph.value_info.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [None, 3]))
    assert GraphIndex(branchy.graph).shape("c") == [None, 3]


def test_fresh_names_avoid_every_scope(branchy: onnx.ModelProto) -> None:
    index = GraphIndex(branchy.graph)
    assert [index.fresh_name("c"), index.fresh_name("c"), index.fresh_name("new"), index.fresh_name("new")] == \
        ["c_1", "c_2", "new", "new_1"]
    assert index.fresh_name("u") == "u_1", "defined in a nested subgraph"
    assert branch(index).fresh_name("y") == "y_1", "defined in the enclosing graph"


def test_set_input_and_set_output_keep_the_index_current(branchy: onnx.ModelProto) -> None:
    index = GraphIndex(branchy.graph)
    add, relu = node(index, "Add"), node(index, "Relu")
    index.set_input(add, 1, "x")
    assert list(add.input) == ["r", "x"] and add in index.consumers["x"]
    assert add not in index.consumers["c"]
    index.set_input(relu, 2, "w")
    assert list(relu.input) == ["c", "", "w"], "missing optional inputs are padded"
    index.set_input(relu, 2, "")
    assert relu not in index.consumers["w"]
    branchy.graph.value_info.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, ["N", 3]))
    index = GraphIndex(branchy.graph)
    mul = node(index, "Mul")
    index.set_output(mul, 0, "c2")
    assert index.producer["c2"] is mul and "c" not in index.producer and "c" not in index.types


def test_insert_remove_and_commit_make_a_valid_graph() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3] x) => (float[N, 3] y) <float[N, 3] d> {
        c = Mul (x, w)
        d = Identity (c)
        y = Relu (d)
    }
    """, {"w": W})
    index = GraphIndex(m.graph)
    mul, identity, relu = index.nodes
    index.remove_node(identity)
    assert index.is_removed(identity) and "d" not in index.producer and identity not in index.consumers["c"]
    two = index.add_initializer("two", np.array(2.0, dtype=np.float32))
    scaled = index.fresh_name("scaled")
    index.insert_before(relu, [helper.make_node("Mul", ["c", two], [scaled])])
    assert index.producer[scaled].op_type == "Mul", "linked before the commit"
    index.set_input(relu, 0, scaled)
    index.commit()
    assert [n.op_type for n in m.graph.node] == ["Mul", "Mul", "Relu"]
    assert [n.op_type for n in index.nodes] == ["Mul", "Mul", "Relu"] and not index.is_removed(mul)
    assert not m.graph.value_info, "the value_info of the removed `d` is dropped"
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(3).normal(size=(2, 3)).astype(np.float32)
    (y,) = run_ort(m, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x * W * 2, 0), rtol=1e-6)


def test_insertions_before_inserted_nodes_and_removed_insertions() -> None:
    # What a fold through a stand-in node does: insert it, insert before it, then remove it again.
    m = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3] x) => (float[N, 3] y) { y = Relu (x) }
    """)
    index = GraphIndex(m.graph)
    (relu,) = index.nodes
    two = index.add_initializer("two", np.array(2.0, dtype=np.float32))
    stand_in = helper.make_node("Identity", ["x"], ["s"])
    index.insert_before(relu, [stand_in])
    index.insert_before(stand_in, [helper.make_node("Mul", ["x", two], ["d"])])
    index.set_input(relu, 0, "d")
    index.remove_node(stand_in)
    index.commit()
    assert [n.op_type for n in m.graph.node] == ["Mul", "Relu"]
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(5).normal(size=(2, 3)).astype(np.float32)
    (y,) = run_ort(m, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x * 2, 0), rtol=1e-6)


def test_add_initializer_takes_a_fresh_name() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[3] x) => (float[3] y) { y = Mul (x, w) }
    """, {"w": W})
    index = GraphIndex(m.graph)
    name = index.add_initializer("w", W * 3)
    assert name == "w_1" and index.initializers[name] is m.graph.initializer[-1]
    np.testing.assert_array_equal(numpy_helper.to_array(m.graph.initializer[-1]), W * 3)


def test_overwrite_initializer_in_place_or_replaced() -> None:
    graph = helper.make_graph([], "g", [], [], [helper.make_tensor("w", onnx.TensorProto.FLOAT, [3], W.tolist())])
    assert graph.initializer[0].float_data, "stored as float_data, not raw bytes"
    index = GraphIndex(graph)
    tensor = index.initializers["w"]
    index.overwrite_initializer("w", W * 5)
    assert index.initializers["w"] is tensor and not tensor.float_data and tensor.raw_data
    np.testing.assert_array_equal(numpy_helper.to_array(tensor), W * 5)
    index.overwrite_initializer("w", np.ones((1, 3), np.float64))
    assert list(tensor.dims) == [1, 3] and tensor.data_type == onnx.TensorProto.DOUBLE


def test_remove_if_dead_removes_unread_constants_only() -> None:
    m = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3] x, bool cond) => (float[N, 3] y) {
        k = Constant <value = float[3] {1, 2, 3}> ()
        kk = Identity (k)
        y = Add (x, kk)
        unused = If (cond) <then_branch = g1 () => (float[3] a) { a = Identity (w) },
                            else_branch = g2 () => (float[3] b) { b = Neg (w) }>
    }
    """, {"w": W, "spare": W, "kept": W})
    m.graph.node[-1].output[0] = "unused"
    index = GraphIndex(m.graph)
    index.set_input(node(index, "Add"), 1, "kept")
    index.remove_if_dead(["kk", "spare", "kept", "x", "unused", "w"])
    index.commit()
    assert [n.op_type for n in m.graph.node] == ["Add", "If"], "the If holds a subgraph: never removed here"
    assert [t.name for t in m.graph.initializer] == ["w", "kept"]
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(4).normal(size=(2, 3)).astype(np.float32)
    (y,) = run_ort(m, {"x": x, "cond": np.array(True)})
    np.testing.assert_allclose(y, x + W, rtol=1e-6)


def test_removing_a_node_with_subgraphs_unlinks_what_they_read(branchy: onnx.ModelProto) -> None:
    index = GraphIndex(branchy.graph)
    if_node = node(index, "If")
    index.remove_node(if_node)
    assert if_node not in index.consumers["c"] and if_node not in index.consumers["cond"]
    assert index.uses("c") == 2, "Relu and Add"
