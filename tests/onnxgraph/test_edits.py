"""The rewiring edits: absorb a node into its producer, bypass it, replace it by an Add; names downstream stay."""

from __future__ import annotations

import numpy as np
import onnx
from support.builders import assert_close, parse, run_ort

from foldnorm.onnxgraph.edits import absorb, append_bias, bypass, shape_readers
from foldnorm.onnxgraph.graph import GraphIndex


def edited(model: onnx.ModelProto, edit: str) -> tuple[onnx.ModelProto, GraphIndex]:
    """A copy of `model` and an index over it, for `edit` (a label for failures only)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, GraphIndex(copy.graph, path=edit)


def node(index: GraphIndex, output: str) -> onnx.NodeProto:
    return index.producer[output]


def commit_and_check(index: GraphIndex, model: onnx.ModelProto) -> None:
    index.commit()
    onnx.checker.check_model(model, full_check=True)


def test_absorb_lets_the_producer_write_the_output_and_moves_shape_readers(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3] x) => (float[N, 3] y, int64[2] s) {
        c = Relu (x)
        s = Shape (c)
        y = Identity (c)
    }
    """)
    out, index = edited(model, "absorb")
    assert shape_readers(index, "c") == [node(index, "s")]
    absorb(index, node(index, "y"), node(index, "c"))
    commit_and_check(index, out)
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == \
        [("Relu", ["x"], ["y"]), ("Shape", ["y"], ["s"])]
    x = {"x": rng.normal(0, 1, (2, 3)).astype(np.float32)}
    assert_close(run_ort(model, x), run_ort(out, x))


def test_bypass_feeds_the_input_to_the_consumer_and_drops_dead_parameters(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3] x) => (float[N, 3] y) {
        h = Mul (x, one)
        y = Relu (h)
    }
    """, {"one": np.ones(3, np.float32)})
    out, index = edited(model, "bypass")
    bypass(index, node(index, "h"), node(index, "y"))
    commit_and_check(index, out)
    assert [(n.op_type, list(n.input)) for n in out.graph.node] == [("Relu", ["x"])]
    assert not out.graph.initializer, "the Mul's constant is read by no one any more"
    x = {"x": rng.normal(0, 1, (2, 3)).astype(np.float32)}
    assert_close(run_ort(model, x), run_ort(out, x))


def test_append_bias_replaces_the_node_by_an_add_with_its_name_and_metadata(rng: np.random.Generator) -> None:
    w = rng.normal(0, 1, (4, 3)).astype(np.float32)
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4] x) => (float[N, 3] y) {
        m = MatMul (x, W)
        y = Identity (m)
    }
    """, {"W": w})
    model.graph.node[1].name = "tail"
    model.graph.node[1].metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'fc']")
    bias = rng.normal(0, 1, 3).astype(np.float32)
    out, index = edited(model, "append_bias")
    append_bias(index, node(index, "y"), node(index, "m"), bias)
    commit_and_check(index, out)
    add = out.graph.node[1]
    assert (add.op_type, add.name, list(add.output)) == ("Add", "tail", ["y"])
    assert list(add.metadata_props) == list(model.graph.node[1].metadata_props)
    x = {"x": rng.normal(0, 1, (2, 4)).astype(np.float32)}
    assert_close([x["x"] @ w + bias], run_ort(out, x))
