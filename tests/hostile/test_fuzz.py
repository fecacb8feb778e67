"""The standing defence: small valid models, mutated field by field, fed to `fold`, `inspect` and `verify`.

For every mutated model: exit 0, 1 or 3 (2 is for usage, and the arguments are fixed), never a traceback,
nothing written but the named outputs (the directory is listed before and after), the input's bytes
unchanged, no temporary file left, and an output written with exit 0 loads as a consistent model.

Mutations: tensor dims, data and types; data_location and external_data entries (locations that escape the
directory, through `..`, an absolute path, a symlink, a FIFO; offsets and lengths that are negative, not
numbers, too long); attribute types and values; node inputs, outputs, op types and domains; opset imports;
graph input types and shapes; nodes inside If branches and model-local functions, and the function calls.
The quick profile runs in `make test`; `FOLDNORM_FUZZ=1` (`make fuzz`) runs the long one.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from support.builders import bn_inputs, bn_params, conv_bn, parse
from support.cli import run, snapshot

from foldnorm.onnxgraph.atomicfile import TEMP_PREFIX
from foldnorm.onnxgraph.graph import subgraphs
from foldnorm.onnxgraph.modelio import load_model
from foldnorm.onnxgraph.tensors import all_tensors

FUZZ = os.environ.get("FOLDNORM_FUZZ") == "1"
PROFILE = settings(
    max_examples=int(os.environ.get("FOLDNORM_FUZZ_EXAMPLES", "1000")) if FUZZ else 150,
    deadline=None,
    derandomize=not FUZZ,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
Draw = Callable[[st.SearchStrategy], object]  # hypothesis' data.draw
T = TypeVar("T")


def _if_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> BN inside an If branch, reading the weights of the enclosing graph."""
    inits = {"W": rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 8, 8] x, bool c) => (float[N, 6, 8, 8] y) {{
        y = If (c) <then_branch = t () => (float[N, 6, 8, 8] ty) {{
                        a = Conv <pads = [1, 1, 1, 1]> (x, W)
                        ty = BatchNormalization (a, {bn_inputs("bn")})
                    }}, else_branch = e () => (float[N, 6, 8, 8] ey) {{
                        b = Conv <pads = [1, 1, 1, 1]> (x, W)
                        ey = Relu (b)
                    }}>
    }}
    """, inits)


def _function_model(rng: np.random.Generator) -> onnx.ModelProto:
    """A model-local function local.CBN (Conv -> BN, its weights Constant nodes) called from the main graph."""
    params = {"W": rng.normal(0, 0.5, (6, 3, 1, 1)).astype(np.float32), **bn_params("bn", 6, rng)}
    body = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k)) for k, v in params.items()]
    body += [helper.make_node("Conv", ["i", "W"], ["c"]),
             helper.make_node("BatchNormalization", ["c", *bn_inputs("bn").split(", ")], ["o"],
                              epsilon=1e-5)]
    function = helper.make_function("local", "CBN", ["i"], ["o"], body, [helper.make_opsetid("", 18)])
    graph = helper.make_graph([helper.make_node("CBN", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 6, 8, 8])])
    return helper.make_model(graph, functions=[function], ir_version=8,
                             opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)])


def _dynamo_bias(rng: np.random.Generator) -> onnx.ModelProto:
    """The raw dynamo exporter's zero conv bias, ConstantOfShape(Shape(W)[0:1]), then BN."""
    inits = {"W": rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), **bn_params("bn", 6, rng)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 3, 8, 8] x) => (float[N, 6, 8, 8] y) {{
        s = Shape <start = 0, end = 1> (W)
        b = ConstantOfShape (s)
        c = Conv <pads = [1, 1, 1, 1]> (x, W, b)
        y = BatchNormalization (c, {bn_inputs("bn")})
    }}
    """, inits)


def _gemm_and_conv_transpose(rng: np.random.Generator) -> onnx.ModelProto:
    inits = {"B": rng.normal(0, 0.5, (12, 4)).astype(np.float32), "T": rng.normal(0, 0.5, (4, 3, 2, 2)).astype(
        np.float32), **bn_params("g", 4, rng), **bn_params("t", 6, rng)}
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 12] x, float[N, 4, 5, 5] z) => (float[N, 4] y, float[N, 6, 6, 6] w) {{
        m = Gemm (x, B)
        y = BatchNormalization (m, {bn_inputs("g")})
        u = ConvTranspose <group = 2> (z, T)
        w = BatchNormalization (u, {bn_inputs("t")})
    }}
    """, inits)


BASES: dict[str, Callable[[np.random.Generator], onnx.ModelProto]] = {
    "conv-bn": conv_bn, "conv-bn external": conv_bn, "if": _if_model, "function": _function_model,
    "dynamo bias": _dynamo_bias, "gemm+convtranspose": _gemm_and_conv_transpose,
}
LOCATIONS = ["m.onnx.data", "../secret.bin", "/etc/passwd", "link_out", "fifo", "", "a\0b", "sub/../m.onnx.data",
             "missing.bin", "m.onnx", ".", "x" * 300]
NUMBERS = ["0", "-1", "abc", "1e3", "16", "648", "99999999999999999999999", "", " 4", "0x10", "٣"]
DIMS = [-1, 0, 1, 2, 3, 4, 6, 7, 12, 2**31, 2**40]
ELEM_TYPES = [0, 1, 2, 6, 7, 9, 10, 11, 16, 17, 22, 23, 40]
OPS = ["Conv", "ConvTranspose", "BatchNormalization", "Gemm", "MatMul", "Add", "Mul", "Div", "Identity", "Cast",
       "Expand", "ConstantOfShape", "Reshape", "Shape", "Relu", "If", "Loop", "Constant", "Concat", "Nope"]
ATTRS = ["group", "pads", "strides", "dilations", "kernel_shape", "axis", "to", "epsilon", "training_mode",
         "perm", "value", "transB", "alpha", "start", "end", "spatial", "momentum", "allowzero"]


def _graphs(model: onnx.ModelProto) -> list[onnx.GraphProto | onnx.FunctionProto]:
    found: list[onnx.GraphProto | onnx.FunctionProto] = []

    def walk(g: onnx.GraphProto | onnx.FunctionProto) -> None:
        found.append(g)
        for node in g.node:
            for sub in subgraphs(node):
                walk(sub)

    walk(model.graph)
    for function in model.functions:
        walk(function)
    return found


def _nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for g in _graphs(model) for n in g.node]


def _names(model: onnx.ModelProto) -> list[str]:
    return sorted({n for node in _nodes(model) for n in [*node.input, *node.output]} | {"", "ghost"})


def _pick(draw: Draw, items: list[T]) -> T:
    """One of `items`, drawn by index (so a failing example prints a number, not a tensor's bytes)."""
    assume(items)
    return items[draw(st.integers(0, len(items) - 1))]  # type: ignore[operator]


def _tensor_dims(model: onnx.ModelProto, draw: Draw) -> str:
    tensor = _pick(draw, all_tensors(model))
    del tensor.dims[:]
    tensor.dims.extend(draw(st.lists(st.sampled_from(DIMS), max_size=4)))
    return "dims"


def _tensor_data(model: onnx.ModelProto, draw: Draw) -> str:
    tensor = _pick(draw, all_tensors(model))
    how = draw(st.sampled_from(["truncate", "extend", "typed field", "type", "clear"]))
    if how == "truncate":
        tensor.raw_data = tensor.raw_data[: draw(st.integers(0, max(len(tensor.raw_data) - 1, 0)))]
    elif how == "extend":
        tensor.raw_data = tensor.raw_data + bytes(draw(st.integers(1, 64)))
    elif how == "typed field":
        tensor.ClearField("raw_data")
        tensor.float_data.extend([1.5] * draw(st.integers(0, 200)))
    elif how == "type":
        tensor.data_type = draw(st.sampled_from(ELEM_TYPES))
    else:
        tensor.Clear()
    return f"data {how}"


def _external(model: onnx.ModelProto, draw: Draw) -> str:
    tensor = _pick(draw, all_tensors(model))
    tensor.data_location = draw(st.sampled_from([onnx.TensorProto.EXTERNAL, onnx.TensorProto.DEFAULT]))
    if draw(st.booleans()):
        tensor.ClearField("raw_data")
    del tensor.external_data[:]
    entries = {"location": draw(st.sampled_from(LOCATIONS))}
    for key in ("offset", "length"):
        if draw(st.booleans()):
            entries[key] = draw(st.sampled_from(NUMBERS))
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return f"external {entries['location'][:12]!r}"


def _attribute(model: onnx.ModelProto, draw: Draw) -> str:
    node = _pick(draw, _nodes(model))
    how = draw(st.sampled_from(["type", "int", "ints", "float", "ref", "tensor", "drop"]))
    if how == "drop" or not node.attribute:
        if node.attribute:
            del node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        return "attribute drop"
    name = draw(st.sampled_from([a.name for a in node.attribute] + ATTRS))
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if how == "type":
        a = node.attribute.add()
        a.name, a.type = name, draw(st.integers(0, 14))
        a.i = draw(st.sampled_from(DIMS))
    elif how == "int":
        node.attribute.append(helper.make_attribute(name, draw(st.sampled_from(DIMS))))
    elif how == "ints":
        node.attribute.append(helper.make_attribute(name, draw(st.lists(st.sampled_from(DIMS), min_size=1,
                                                                         max_size=6))))
    elif how == "float":
        node.attribute.append(helper.make_attribute(name, draw(st.sampled_from([0.0, -1.0, 1e-5, float("nan")]))))
    elif how == "ref":
        a = node.attribute.add()
        a.name, a.type, a.ref_attr_name = name, onnx.AttributeProto.INT, "g"
    else:
        node.attribute.append(helper.make_attribute(name, numpy_helper.from_array(
            np.arange(draw(st.integers(0, 8)), dtype=np.float32))))
    return f"attribute {how}"


def _node_io(model: onnx.ModelProto, draw: Draw) -> str:
    node = _pick(draw, _nodes(model))
    names = _names(model)
    how = draw(st.sampled_from(["input", "output", "append", "remove"]))
    if how == "input" and node.input:
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names))
    elif how == "output" and node.output:
        node.output[draw(st.integers(0, len(node.output) - 1))] = draw(st.sampled_from(names))
    elif how == "append":
        node.input.append(draw(st.sampled_from(names)))
    elif node.input:
        del node.input[-1]
    return f"node {how}"


def _op_type(model: onnx.ModelProto, draw: Draw) -> str:
    node = _pick(draw, _nodes(model))
    if draw(st.booleans()):
        node.op_type = draw(st.sampled_from(OPS))
    else:
        node.domain = draw(st.sampled_from(["", "ai.onnx", "local", "com.example", "ai.onnx.ml"]))
    return "op type"


def _opset(model: onnx.ModelProto, draw: Draw) -> str:
    how = draw(st.sampled_from(["version", "add", "clear", "ir"]))
    if how == "version" and model.opset_import:
        model.opset_import[draw(st.integers(0, len(model.opset_import) - 1))].version = draw(
            st.sampled_from([1, 6, 7, 13, 17, 18, 21, 22, 23, 99]))
    elif how == "add":
        model.opset_import.append(helper.make_opsetid(draw(st.sampled_from(["", "local", "x"])),
                                                      draw(st.integers(1, 30))))
    elif how == "clear":
        del model.opset_import[:]
    else:
        model.ir_version = draw(st.sampled_from([1, 3, 4, 7, 10, 11, 99]))
    return f"opset {how}"


def _graph_io(model: onnx.ModelProto, draw: Draw) -> str:
    values = [*model.graph.input, *model.graph.output]
    vi = _pick(draw, values)
    how = draw(st.sampled_from(["type", "dims", "untyped"]))
    if how == "type":
        vi.type.tensor_type.elem_type = draw(st.sampled_from(ELEM_TYPES))
    elif how == "dims":
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in draw(st.lists(st.sampled_from([*DIMS, "N", ""]), max_size=5)):
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d
    else:
        vi.type.Clear()
    return f"graph io {how}"


def _function(model: onnx.ModelProto, draw: Draw) -> str:
    if not model.functions:
        return _op_type(model, draw)
    function = model.functions[0]
    how = draw(st.sampled_from(["rename", "remove", "attribute", "io"]))
    if how == "rename":
        function.name = draw(st.sampled_from(["CBN", "Conv", "Other"]))
    elif how == "remove":
        del model.functions[:]
    elif how == "attribute":
        function.attribute.append("g")
    else:
        function.input.append(draw(st.sampled_from(["extra", "i", "o"])))
    return f"function {how}"


def _plain_float(tensor: onnx.TensorProto) -> bool:
    """A float32 tensor held in the model whose bytes fit its dims (so the fuzzer can read it)."""
    return (tensor.data_type == onnx.TensorProto.FLOAT and tensor.data_location != onnx.TensorProto.EXTERNAL
            and tensor.HasField("raw_data") and len(tensor.raw_data) == 4 * math.prod(tensor.dims))


def _reshape(model: onnx.ModelProto, draw: Draw) -> str:
    """Same elements, other dims (a valid tensor whose shape no longer fits its node)."""
    tensor = _pick(draw, all_tensors(model))
    count = math.prod(tensor.dims)
    if not 0 < count <= 10**5:
        return "reshape skipped"
    split = draw(st.sampled_from([d for d in range(1, count + 1) if count % d == 0] or [1]))
    dims = draw(st.permutations([split, count // split, *draw(st.lists(st.just(1), max_size=2))]))
    del tensor.dims[:]
    tensor.dims.extend(dims)
    return "reshape"


def _retype(model: onnx.ModelProto, draw: Draw) -> str:
    """The same values in another type (a valid tensor, perhaps of a type its node does not take)."""
    tensor = _pick(draw, all_tensors(model))
    if not _plain_float(tensor):
        return "retype skipped"
    dtype = draw(st.sampled_from([np.float16, np.float64, np.int64, np.int8, np.bool_]))
    with np.errstate(over="ignore", invalid="ignore"):
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(dtype), tensor.name))
    return f"retype {np.dtype(dtype).name}"


def _values(model: onnx.ModelProto, draw: Draw) -> str:
    """Special values in a valid float tensor (NaN, infinities, zeros, huge): BN variances, weights, biases."""
    tensor = _pick(draw, all_tensors(model))
    if not _plain_float(tensor):
        return "values skipped"
    array = numpy_helper.to_array(tensor).copy().reshape(-1)
    special = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 1e-30, 70000.0]))
    array[draw(st.lists(st.integers(0, max(array.size - 1, 0)), min_size=1, max_size=3))] = special
    tensor.raw_data = array.astype(np.float32).tobytes()
    return f"values {special}"


def _plausible_attribute(model: onnx.ModelProto, draw: Draw) -> str:
    """An attribute value of the right type, perhaps wrong for the node."""
    node = _pick(draw, _nodes(model))
    name, value = draw(st.sampled_from([
        ("group", draw(st.integers(1, 6))), ("pads", draw(st.lists(st.integers(0, 2), min_size=4, max_size=4))),
        ("strides", [draw(st.integers(1, 3))] * 2), ("dilations", [draw(st.integers(1, 2))] * 2),
        ("epsilon", draw(st.sampled_from([0.0, 1e-5, 1.0]))), ("training_mode", draw(st.integers(0, 1))),
        ("transB", draw(st.integers(0, 1))), ("transA", draw(st.integers(0, 1))), ("alpha", 2.0), ("beta", 0.0),
        ("axis", draw(st.integers(-2, 3))), ("end", draw(st.integers(-1, 4))), ("spatial", 0),
        ("output_padding", [1, 1])]))
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
    return f"attribute {name}"


def _swap_inputs(model: onnx.ModelProto, draw: Draw) -> str:
    node = _pick(draw, _nodes(model))
    if len(node.input) > 1:
        i, j = draw(st.permutations(range(len(node.input))))[:2]
        node.input[i], node.input[j] = node.input[j], node.input[i]
    return "swap inputs"


def _insert_node(model: onnx.ModelProto, draw: Draw) -> str:
    """An Identity, Cast, Neg or Reshape-to-itself on one value of the main graph, read by its old readers."""
    graph = model.graph
    nodes = [n for n in graph.node if n.output and n.output[0]]
    if not nodes:
        return "insert skipped"
    after = _pick(draw, nodes)
    name = after.output[0]
    op = draw(st.sampled_from(["Identity", "Cast", "Neg", "Relu"]))
    fresh = name + "_fuzz"
    for node in graph.node:
        node.input[:] = [fresh if n == name else n for n in node.input]
    for vi in graph.output:
        if vi.name == name:
            vi.name = fresh
    new = helper.make_node(op, [name], [fresh], **({"to": onnx.TensorProto.FLOAT} if op == "Cast" else {}))
    graph.node.insert(list(graph.node).index(after) + 1, new)
    return f"insert {op}"


MUTATIONS = [_tensor_dims, _tensor_data, _external, _attribute, _node_io, _op_type, _opset, _graph_io, _function,
             _reshape, _reshape, _retype, _retype, _plausible_attribute, _plausible_attribute, _plausible_attribute,
             _swap_inputs, _insert_node, _insert_node, _values, _values, _values]


def _lay_out(directory: Path, base: str, model: onnx.ModelProto) -> Path:
    """The model in `directory`/m, a secret file beside that folder, a symlink to it and a FIFO inside."""
    folder = directory / "m"
    folder.mkdir()
    (directory / "secret.bin").write_bytes(b"secret" * 200)
    (folder / "link_out").symlink_to(directory / "secret.bin")
    os.mkfifo(folder / "fifo")
    path = folder / "m.onnx"
    if base.endswith("external"):
        onnx.save(model, path, save_as_external_data=True, location="m.onnx.data", size_threshold=0)
        model.CopyFrom(onnx.load(path, load_external_data=False))
    return path


COMMANDS = {
    "fold": ["fold", "{m}", "-o", "{out}/folded.onnx", "--report", "{out}/report.json"],
    "fold --no-verify": ["fold", "{m}", "-o", "{out}/folded.onnx", "--no-verify"],
    "inspect": ["inspect", "{m}", "--format", "json"],
    "verify": ["verify", "{m}", "{m}"],
}
OUTPUTS = {"folded.onnx", "folded.onnx.data", "report.json"}


def _check(directory: Path, path: Path, command: str) -> None:
    out = directory / "out"
    before = snapshot(directory)
    out.mkdir()
    with warnings.catch_warnings():  # a warning would print lines of its own: it fails the run instead
        warnings.simplefilter("error", RuntimeWarning)
        result = run([a.format(m=path, out=out) for a in COMMANDS[command]])
    event(f"{command}: exit {result.exit_code}")
    if result.exit_code == 1:
        reason = result.stderr.strip().splitlines()[-1].split(": ", 2)[-1]
        event(f"{command}: " + re.sub(r"\d+|'[^']*'|\([^)]*\)", "#", reason)[:60])
    assert result.exit_code in (0, 1, 3), result.output
    assert "Traceback" not in result.output, result.output
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # a progress line, one error line
    written = {p.name for p in out.iterdir()}
    assert written <= OUTPUTS, written
    assert {k: v for k, v in snapshot(directory).items() if not k.startswith(str(out))} == before  # inputs unchanged
    if result.exit_code == 0 and "folded.onnx" in written:
        load_model(out / "folded.onnx")  # the pair written is consistent
    shutil.rmtree(out)


@PROFILE
@given(base=st.sampled_from(list(BASES)), seed=st.integers(0, 3), data=st.data(),
       command=st.sampled_from(list(COMMANDS)))
def test_mutated_models_never_escape(base: str, seed: int, data: st.DataObject, command: str) -> None:
    model = BASES[base](np.random.default_rng(seed))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = _lay_out(directory, base, model)
        for mutate in data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=2)):
            event(mutate(model, data.draw))
        path.write_bytes(model.SerializeToString())
        _check(directory, path, command)
        assert not [p for p in directory.rglob(f"{TEMP_PREFIX}*")]
    assert not [p for p in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{os.getpid()}-*")]
