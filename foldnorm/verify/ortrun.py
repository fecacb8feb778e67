"""Running one model on ONNX Runtime (CPU, optimizations disabled) for a verification.

One session at a time, fed one draw at a time. numpy cannot hand ONNX Runtime a bfloat16 or float8 array,
so a model with such graph inputs or outputs runs with float32 ones instead, cast at the graph's edge: the
body, and every computation in those types, is unchanged, and the values are exact (the random inputs are
drawn in the model's type, and every bfloat16/float8 value is a float32 value). A model that uses an op
ONNX Runtime's CPU provider has no kernel for (bfloat16 Conv, for one) is refused with the op's name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from foldnorm.errors import BackendUnavailableError, FoldnormError, InputSpecError, first_line
from foldnorm.onnxgraph.external import has_weights_on_disk
from foldnorm.onnxgraph.graph import subgraphs
from foldnorm.onnxgraph.modelio import ModelLike, needs_external_data
from foldnorm.verify.skeleton import Skeleton, write_skeleton

if TYPE_CHECKING:
    from foldnorm.bench.backends.ort_cpu import OrtSession

_T = onnx.TensorProto
THROUGH_FLOAT = frozenset({_T.BFLOAT16, _T.FLOAT8E4M3FN, _T.FLOAT8E4M3FNUZ, _T.FLOAT8E5M2, _T.FLOAT8E5M2FNUZ,
                           _T.FLOAT8E8M0, _T.FLOAT4E2M1})
_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")


def _elem_type(vi: onnx.ValueInfoProto) -> int:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0


def cast_at_edges(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of `model` whose bfloat16/float8 inputs and outputs are float32, cast at the graph's edge
    (None when it has none)."""
    if not any(_elem_type(vi) in THROUGH_FLOAT for vi in [*model.graph.input, *model.graph.output]):
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | {v.name for v in graph.input}
    head: list[onnx.NodeProto] = []
    tail: list[onnx.NodeProto] = []
    inputs = {vi.name for vi in graph.input}
    for vi in graph.input:
        if _elem_type(vi) in THROUGH_FLOAT:
            inner = _fresh(vi.name, taken)
            _rename(graph, vi.name, inner, produced=False)
            head.append(helper.make_node("Cast", [vi.name], [inner], to=_elem_type(vi)))
            vi.type.tensor_type.elem_type = _T.FLOAT
    for vi in graph.output:
        if _elem_type(vi) in THROUGH_FLOAT:
            if vi.name not in inputs:  # an output that is an input is that (now float32) input itself
                inner = _fresh(vi.name, taken)
                _rename(graph, vi.name, inner, produced=True)
                tail.append(helper.make_node("Cast", [inner], [vi.name], to=_T.FLOAT))
            vi.type.tensor_type.elem_type = _T.FLOAT
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    return copy


def _fresh(name: str, taken: set[str]) -> str:
    k = 0
    while f"{name}__edge{k}" in taken:
        k += 1
    taken.add(f"{name}__edge{k}")
    return f"{name}__edge{k}"


def _rename(graph: onnx.GraphProto, old: str, new: str, *, produced: bool, nested: bool = False) -> None:
    """`old` renamed wherever `graph` reads it (subgraphs included, they read it from the enclosing scope),
    and, when `produced`, where it is made (a node output, an initializer, a value_info) too."""
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        if produced:
            node.output[:] = [new if n == old else n for n in node.output]
        for sub in subgraphs(node):
            _rename(sub, old, new, produced=False, nested=True)
    named = [*graph.initializer, *graph.value_info] if produced else []
    for item in [*named, *(graph.output if nested else [])]:
        if item.name == old:
            item.name = new


def reported_dtype(model: onnx.ModelProto, index: int, actual: np.dtype) -> np.dtype:
    """The dtype output `index` has in the model itself (bfloat16 for one that ran as float32 here)."""
    elem = _elem_type(model.graph.output[index])
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem in THROUGH_FLOAT else actual


def _session_source(source: ModelLike, model: onnx.ModelProto, workdir: Path, name: str) -> str | bytes | Skeleton:
    """What ONNX Runtime opens: the file itself, the serialized model, a skeleton whose weights it shares from
    their files or store (`verify.skeleton`), or a copy written to `workdir`."""
    if not isinstance(source, onnx.ModelProto):
        return str(source)
    skeleton = write_skeleton(model, workdir / f"{name}.onnx") if has_weights_on_disk(model) else None
    if skeleton is not None:
        return skeleton
    if not needs_external_data(model):
        return model.SerializeToString()
    from foldnorm.onnxgraph.modelio import save_model

    return str(save_model(model, workdir / f"{name}.onnx", external_data=True))


def _open(source: str | bytes | Skeleton, model: onnx.ModelProto, label: str, threads: int) -> OrtSession:
    from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession

    options = OrtOptions(threads=threads)
    try:
        if isinstance(source, Skeleton):
            return OrtSession(str(source.path), options, initializers=source.initializers)
        return OrtSession(source, options)
    except FoldnormError as exc:
        missing = _NO_KERNEL.search(str(exc.__cause__ or ""))
        if missing is None:
            raise
        op, version, node = missing.groups()
        graph = model.graph
        types = sorted({helper.tensor_dtype_to_np_dtype(t).name for t in
                        [*(_elem_type(v) for v in [*graph.input, *graph.output, *graph.value_info]),
                         *(t.data_type for t in graph.initializer)] if t in THROUGH_FLOAT})
        hint = f" ({', '.join(types)}: that provider has few kernels for it)" if types else ""
        raise BackendUnavailableError(
            f"{label}: ONNX Runtime's CPU provider has no kernel for {op}-{version}"
            f"{f' (node {node!r})' if node else ''} with this model's types{hint}, so it cannot run the model "
            "to verify it (fold --no-verify skips the verification)") from exc


def outputs(source: ModelLike, model: onnx.ModelProto, workdir: Path, role: str, label: str,
            draws: Iterable[dict[str, np.ndarray]], *, threads: int = 0) -> Iterator[list[np.ndarray]]:
    """The outputs of `model` (`source`: its file, or the model itself) for each feed of `draws`, in turn, on
    `threads` intra-op threads (0: ONNX Runtime's default, every core)."""
    edged = cast_at_edges(model)
    widened = {vi.name for vi in model.graph.input if _elem_type(vi) in THROUGH_FLOAT}
    opened = _session_source(source if edged is None else edged, edged or model, workdir, role)
    with _open(opened, model, label, threads) as session:
        for feeds in draws:
            fed = {k: v.astype(np.float32) if k in widened else v for k, v in feeds.items()}
            try:
                result = session.run(fed)
            except Exception as exc:  # ORT raises untyped errors for inputs the graph cannot take
                if not type(exc).__module__.startswith("onnxruntime"):
                    raise
                raise InputSpecError(f"{label}: ONNX Runtime cannot run the {role} on these inputs "
                                     f"({first_line(exc)}); give shapes the model accepts (--shape "
                                     "NAME:1x3x224x224)") from None
            yield result
