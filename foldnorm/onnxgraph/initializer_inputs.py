"""Initializers that are also listed as graph inputs, read as constants for a fold.

Below IR version 4 the format wants every initializer listed as a graph input too, and ONNX Runtime reads such
inputs as constants there (from IR 4 on, as defaults a caller may override). `detach` takes them off the
input list of a graph so that the fold sees constants; `relist` puts the ones that are still initializers
back, in their places, typed as the tensors now are (for a model that must stay below IR 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper


@dataclass(frozen=True)
class DetachedInputs:
    """The input names of a graph before `detach`, in order, and how many of them were initializers."""

    order: tuple[str, ...]
    count: int


def detach(graph: onnx.GraphProto) -> DetachedInputs:
    """Take the initializers off `graph`'s inputs (they become plain initializers: constants)."""
    inits = {t.name for t in graph.initializer}
    order = tuple(vi.name for vi in graph.input)
    kept = [vi for vi in graph.input if vi.name not in inits]
    count = len(graph.input) - len(kept)
    del graph.input[:]
    graph.input.extend(kept)
    return DetachedInputs(order, count)


def relist(graph: onnx.GraphProto, detached: DetachedInputs) -> None:
    """List again, in their original places, the detached inputs that are still initializers of `graph`."""
    inits = {t.name: t for t in graph.initializer}
    current = {vi.name: vi for vi in graph.input}
    inputs = []
    for name in detached.order:
        if name in current:
            inputs.append(current[name])
        elif name in inits:
            inputs.append(helper.make_tensor_value_info(name, inits[name].data_type, list(inits[name].dims)))
    del graph.input[:]
    graph.input.extend(inputs)
