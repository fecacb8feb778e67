"""ShapeProver: the rank and element type of values the graph proves, and shape inference as the last resort."""

from __future__ import annotations

import numpy as np
import onnx
from support.builders import parse

from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex
from foldnorm.onnxgraph.shapes import ShapeProver


def prover(model: onnx.ModelProto, *, with_model: bool = False) -> ShapeProver:
    index = GraphIndex(model.graph)
    return ShapeProver(index, ConstantResolver(index), model if with_model else None)


def test_ranks_from_records_producers_and_weights(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float16[N, 4, 6, 6] x, float16[N, 5] a, int64[K] shape) => (float16[N, 6, 6, 6] y, float16[N, 3] z,
                                                                    float16[M] f) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        r = Relu (c)
        y = Cast <to = 10> (r)
        z = Gemm (a, B)
        f = Reshape (a, shape)
    }
    """, {"W": rng.normal(0, 1, (6, 4, 3, 3)).astype(np.float16), "B": rng.normal(0, 1, (5, 3)).astype(np.float16)})
    for vi in model.graph.output:  # nothing recorded for the outputs: only producers prove anything
        vi.type.tensor_type.ClearField("shape")
    shapes = prover(model)
    assert (shapes.rank("x"), shapes.rank("c"), shapes.rank("r"), shapes.rank("y"), shapes.rank("z")) == (4, 4, 4, 4, 2)
    assert shapes.rank("f") is None, "a Reshape to a run-time shape has no provable rank"
    assert shapes.rank("W") == 4, "an initializer's dims"
    assert (shapes.elem_type("c"), shapes.elem_type("r")) == (onnx.TensorProto.FLOAT16,) * 2
    assert shapes.elem_type("nothing") is None


def test_shape_inference_proves_what_no_producer_rule_does(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 5] x) => (float[N, 5] y) {
        y = ReduceMean <keepdims = 0> (x, axes)
    }
    """, {"axes": np.array([1], np.int64)})
    model.graph.output[0].type.tensor_type.ClearField("shape")
    assert prover(model).rank("y") is None, "a subgraph (no model) proves nothing about ReduceMean"
    assert prover(model, with_model=True).rank("y") == 2


def test_dims_from_records_then_shape_inference(rng: np.random.Generator) -> None:
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4, 6, 6] x) => (float[N, 10, 6, 6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W)
        y = Concat <axis = 1> (c, x)
    }
    """, {"W": rng.normal(0, 1, (6, 4, 3, 3)).astype(np.float32)})
    plain = prover(model)
    assert (plain.dim("x", 1), plain.dim("y", -3), plain.dim("x", 0), plain.dim("x", 4)) == (4, 10, None, None)
    assert plain.dim("c", 1) is None, "nothing recorded, and a subgraph (no model) infers nothing"
    assert prover(model, with_model=True).dim("c", 1) == 6


def test_element_types_from_shape_inference_when_no_producer_proves_them(rng: np.random.Generator) -> None:
    # The legacy exporter records no types inside the graph; Pow is no dtype-preserving producer the prover follows.
    model = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float16[N, 4] x) => (float16[N, 4] y) {
        p = Pow (x, two)
        y = Relu (p)
    }
    """, {"two": np.array(2, np.float16)})
    assert prover(model).elem_type("p") is None, "a subgraph (no model) proves nothing about Pow"
    assert prover(model, with_model=True).elem_type("p") == onnx.TensorProto.FLOAT16
