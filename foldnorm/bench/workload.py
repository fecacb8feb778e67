"""What a benchmark feeds and how its rows are labelled: the batch sizes a model can really take, each input's
shape at a batch size, the precision the model computes in, and its size.

A model whose batch axis is static runs at that batch only, whatever was asked, and the rows say so: timing
batch 1 and calling it batch 4 would multiply the throughput by four.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np
import onnx

from foldnorm.bench.backends.base import BenchInputs
from foldnorm.errors import InputSpecError
from foldnorm.onnxgraph.inputs import InputSpec, Shape, concrete_shape, input_specs, make_feeds
from foldnorm.verify.quantized import is_quantized

#: Short names of floating ONNX element types, as the precision column shows them.
FLOAT_NAMES: dict[int, str] = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
               onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.DOUBLE: "fp64"}


@dataclass(frozen=True)
class ModelStats:
    """A model's serialized size (weights included) and node count (subgraphs included)."""

    bytes: int
    nodes: int

    def text(self) -> str:
        """`2.79 MB, 112 nodes`."""
        return f"{self.bytes / 1e6:.2f} MB, {self.nodes} node{'' if self.nodes == 1 else 's'}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"bytes": self.bytes, "nodes": self.nodes}


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _graphs(sub)


def model_stats(model: onnx.ModelProto) -> ModelStats:
    """Size in bytes of the model as one protobuf (as saved without external data) and its number of nodes."""
    nodes = sum(len(g.node) for g in _graphs(model.graph)) + sum(len(f.node) for f in model.functions)
    return ModelStats(model.ByteSize(), nodes)


def precision_label(model: onnx.ModelProto) -> str:
    """The precision a model computes in: `int8` for a quantized (QDQ) model; otherwise from its float inputs and
    its weights (the float dtype holding most weight elements): `fp32`, `fp16`, ..., or `fp16 weights, fp32
    inputs` when the two differ."""
    if is_quantized(model):
        return "int8"
    inputs = sorted({FLOAT_NAMES[s.elem_type] for s in input_specs(model) if s.elem_type in FLOAT_NAMES})
    counts: Counter[str] = Counter()
    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type in FLOAT_NAMES:
                counts[FLOAT_NAMES[tensor.data_type]] += prod(tensor.dims)
    weights = counts.most_common(1)[0][0] if counts else None
    if weights is None:
        return "/".join(inputs) or "/".join(sorted({s.dtype.name for s in input_specs(model)})) or "fp32"
    if not inputs or inputs == [weights]:
        return weights
    return f"{weights} weights, {'/'.join(inputs)} inputs"


@dataclass(frozen=True)
class Workload:
    """The batch sizes a benchmark runs and the shape of every input at each of them.

    `shapes` holds the user's full shapes by input name (their batch axis replaced by the batch run, where it
    is dynamic); `note` says why the batch sizes differ from the ones asked for.
    """

    specs: tuple[InputSpec, ...]
    shapes: Mapping[str, Shape]
    batch_sizes: tuple[int, ...]
    dynamic_batch: Mapping[str, bool]
    note: str | None = None

    @property
    def static_batch(self) -> bool:
        """Every input's batch axis is fixed."""
        return bool(self.dynamic_batch) and not any(self.dynamic_batch.values())

    def verify_batch_sizes(self) -> list[int]:
        """Batch sizes to verify the fold at: 1, 2 and every batch timed; a static batch only at its size."""
        return list(self.batch_sizes) if self.static_batch else sorted({1, 2, *self.batch_sizes})

    def inputs(self, batch_size: int) -> BenchInputs:
        """What the backends see of the inputs at `batch_size`."""
        shapes = {s.name: concrete_shape(s, batch_size, self.shapes.get(s.name)) for s in self.specs}
        return BenchInputs(shapes, self.dynamic_batch)

    def feeds(self, model: onnx.ModelProto, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """Seeded random inputs at `batch_size`."""
        return make_feeds(model, batch_size, seed, self.shapes)


def _named(specs: Sequence[InputSpec], given: Sequence[Shape] | Mapping[str, Shape] | None) -> dict[str, Shape]:
    """The user's shapes by input name: named ones as they are, unnamed ones in input order (one per input)."""
    if given is None:
        return {}
    if isinstance(given, Mapping):
        return dict(given)
    if len(given) != len(specs):
        names = ", ".join(s.name for s in specs)
        raise InputSpecError(f"the model has {len(specs)} input(s) ({names}) but {len(given)} shape(s) were given; "
                             "give one --input-shape per input, in order, or name them NAME:1x3x224x224")
    return {s.name: tuple(shape) for s, shape in zip(specs, given)}


def plan_workload(model: onnx.ModelProto, batch_sizes: Sequence[int],
                  shapes: Sequence[Shape] | Mapping[str, Shape] | None = None) -> Workload:
    """The batch sizes `model` can run of those asked for, and its inputs' shapes (`shapes`: the sizes of
    dynamic dims, one per input in order or by name).

    A model whose every batch axis is static runs at that batch only; the workload's note names the input and
    its static dimension when that differs from what was asked.
    """
    asked = tuple(dict.fromkeys(batch_sizes))
    if not asked or any(b < 1 for b in asked):
        raise InputSpecError(f"batch sizes {list(batch_sizes)} must be positive integers, e.g. 1,8,32")
    specs = tuple(input_specs(model))
    dynamic = {s.name: not (isinstance(s.dims[0], int) and s.dims[0] > 0) for s in specs if s.dims}
    workload = Workload(specs, _named(specs, shapes), asked, dynamic)
    if not workload.static_batch:
        return workload
    first, fixed = next((s, d) for s in specs if s.dims for d in s.dims[:1] if isinstance(d, int))
    note = None
    if asked != (fixed,):
        note = (f"input {first.name!r} has a static batch dimension (axis 0 is {fixed}): timed at batch {fixed} "
                f"only, not at batch {', '.join(map(str, asked))}; export with a dynamic batch axis to time other "
                "batch sizes")
    return Workload(specs, workload.shapes, (fixed,), dynamic, note)
