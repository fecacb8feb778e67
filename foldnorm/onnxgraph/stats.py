"""What a model holds, for before/after summaries: nodes by op type, parameter count, size in bytes."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from foldnorm.onnxgraph.external import all_tensors, in_memory_bytes
from foldnorm.onnxgraph.graph import subgraphs


@dataclass
class ModelStats:
    """Nodes by op type (subgraphs and model-local functions included), parameters (elements of initializers and
    constant tensors) and bytes: the files' size on disk, or the tensors held in memory (`size_on_disk` False)."""

    nodes: dict[str, int] = field(default_factory=dict)
    parameters: int = 0
    bytes: int = 0
    size_on_disk: bool = False

    @property
    def node_count(self) -> int:
        """All nodes."""
        return sum(self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"nodes": self.nodes, "node_count": self.node_count, "parameters": self.parameters,
                "bytes": self.bytes, "size_on_disk": self.size_on_disk}


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    found = []
    for node in graph.node:
        found.append(node)
        for sub in subgraphs(node):
            found.extend(_nodes(sub))
    return found


def model_stats(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> ModelStats:
    """Count `model`'s nodes and parameters; its size is that of the file `path` and its data files, if given."""
    nodes = [*_nodes(model.graph), *(n for f in model.functions for n in f.node)]
    counts = Counter(n.op_type for n in nodes)
    parameters = sum(int(np.prod(t.dims, dtype=np.int64)) for t in all_tensors(model))
    stats = ModelStats(dict(sorted(counts.items())), parameters, in_memory_bytes(model))
    if path is not None:
        stats.bytes, stats.size_on_disk = file_bytes(path), True
    return stats


def file_bytes(path: str | os.PathLike) -> int:
    """The size of an ONNX file and of the external data files it names."""
    where = Path(path)
    model = onnx.load(str(where), load_external_data=False)
    locations = {e.value for t in all_tensors(model) for e in t.external_data if e.key == "location"}
    return where.stat().st_size + sum((where.parent / loc).stat().st_size for loc in locations
                                      if (where.parent / loc).is_file())
