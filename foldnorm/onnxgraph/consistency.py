"""Checks, before folding, that the ops foldnorm rewrites are consistent with their weights' shapes.

`onnx.checker` and shape inference do not see every inconsistency: a ConvTranspose whose weight has 32 input
channels and `group=3` passes both when the input's channel count is symbolic, and the fold maths would then
fail deep inside numpy. `check_consistency` refuses such a model up front with `InvalidModelError` naming
the node.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from foldnorm.errors import InvalidModelError
from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex, attribute_refs, is_onnx_op, node_label, subgraphs


def check_consistency(model: onnx.ModelProto, label: str) -> None:
    """Raise `InvalidModelError` (naming `label`) for a (transposed) convolution whose group, weight, bias and
    input channels disagree, in any graph or function of the model."""
    _check_graph(model.graph, None, label)
    for function in model.functions:
        body = onnx.helper.make_graph(list(function.node), function.name, [], [])
        _check_graph(body, None, label)


def _check_graph(graph: onnx.GraphProto, outer: ConstantResolver | None, label: str) -> None:
    constants = ConstantResolver(GraphIndex(graph, outer.index if outer else None), outer)
    for node in graph.node:
        check = _CHECKS.get(node.op_type) if is_onnx_op(node, node.op_type) and not attribute_refs(node) else None
        if check is not None:
            problem = check(constants, node)
            if problem is not None:
                raise InvalidModelError(f"{label}: {node.op_type} {node_label(node)!r} {problem}; fix or re-export "
                                        "the model.")
        for sub in subgraphs(node):
            _check_graph(sub, constants, label)


def _shape(constants: ConstantResolver, name: str) -> list[int] | None:
    """The shape of `name` when foldnorm can know it: the dims of an initializer or a Constant (through
    Identity), a recorded static shape, or the shape of a value the constant evaluator computes."""
    static = _static_shape(constants.index, name)
    if static is not None or name not in constants.index.producer:
        return static
    value = constants.value(name)
    return list(value.shape) if value is not None else None


def _static_shape(index: GraphIndex, name: str) -> list[int] | None:
    """The shape of `name` when every dim is a known int: an initializer, a Constant, or an Identity of one."""
    for _ in range(64):
        producer = index.producer.get(name)
        if producer is not None and is_onnx_op(producer, "Identity") and producer.input:
            name = producer.input[0]
            continue
        if producer is not None and is_onnx_op(producer, "Constant"):
            value = next((a.t for a in producer.attribute if a.name == "value" and a.HasField("t")), None)
            return list(value.dims) if value is not None else None
        shape = index.shape(name)
        dims = [d for d in shape or [] if isinstance(d, int)]
        return dims if shape is not None and len(dims) == len(shape) else None
    return None


def _conv_problem(constants: ConstantResolver, node: onnx.NodeProto) -> str | None:
    """What is inconsistent about a Conv/ConvTranspose node (None: nothing foldnorm can see)."""
    groups = [a for a in node.attribute if a.name == "group"]
    if groups and (groups[0].type != onnx.AttributeProto.INT or groups[0].i < 1):
        return "has a group attribute that is not a positive integer"
    group = groups[0].i if groups else 1
    index = constants.index
    weight = _shape(constants, node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if weight is None:
        return None
    if len(weight) < 3:
        return f"has a weight of shape {weight}; a convolution weight has rank 3 or more"
    transposed = node.op_type == "ConvTranspose"
    if weight[0] % group:
        side = "input" if transposed else "output"
        return f"has {weight[0]} {side} channels in its weight {weight}, not divisible by group={group}"
    outputs = weight[1] * group if transposed else weight[0]
    inputs = weight[0] if transposed else weight[1] * group
    bias = _shape(constants, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if bias is not None and bias != [outputs]:
        return f"has a bias of shape {bias} for {outputs} output channels"
    x = index.shape(node.input[0]) if node.input and node.input[0] else None
    if x is not None and len(x) != len(weight):
        return f"reads a rank-{len(x)} input with a rank-{len(weight)} weight"
    if x is not None and isinstance(x[1], int) and x[1] > 0 and x[1] != inputs:
        return f"reads {x[1]} input channels, but its weight {weight} with group={group} takes {inputs}"
    return None


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int | None:
    """An INT attribute's value (None when it has another type: the checker reports that)."""
    found = [a for a in node.attribute if a.name == name]
    if not found:
        return default
    return found[0].i if found[0].type == onnx.AttributeProto.INT else None


def _gemm_problem(constants: ConstantResolver, node: onnx.NodeProto) -> str | None:
    """What is inconsistent about a Gemm's B and C (None: nothing foldnorm can see)."""
    b = _shape(constants, node.input[1]) if len(node.input) > 1 and node.input[1] else None
    trans_a, trans_b = _int_attr(node, "transA", 0), _int_attr(node, "transB", 0)
    if b is None or trans_a is None or trans_b is None:
        return None
    if len(b) != 2:
        return f"has a B of shape {b}; Gemm's B has rank 2"
    k, n = (b[1], b[0]) if trans_b else (b[0], b[1])
    a = constants.index.shape(node.input[0]) if node.input[0] else None
    m: int | str | None = None
    if a is not None and len(a) == 2:
        m, a_k = (a[1], a[0]) if trans_a else (a[0], a[1])
        if isinstance(a_k, int) and a_k > 0 and a_k != k:
            return f"multiplies a {a} A by a {b} B (transA={trans_a}, transB={trans_b})"
    c = _shape(constants, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if c is None:
        return None
    target = [m, n]
    fits = len(c) <= 2 and all(d == 1 or t is None or not isinstance(t, int) or d == t
                               for d, t in zip(reversed(c), reversed(target)))
    return None if fits else f"has a C of shape {c}, which does not broadcast to its output [M, {n}]"


_CHECKS: dict[str, Callable[[ConstantResolver, onnx.NodeProto], str | None]] = {
    "Conv": _conv_problem, "ConvTranspose": _conv_problem, "Gemm": _gemm_problem,
}
