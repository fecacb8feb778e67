"""What a model holds, for before/after summaries: nodes by op type, parameter count, size in bytes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
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
    constant tensors), the bytes of tensor data in memory, and the files' size on disk when known."""

    nodes: dict[str, int] = field(default_factory=dict)
    parameters: int = 0
    tensor_bytes: int = 0
    file_bytes: int | None = None

    @property
    def node_count(self) -> int:
        """All nodes."""
        return sum(self.nodes.values())

    def estimate_file_bytes(self, before: ModelStats) -> int | None:
        """This model's file size: known, or `before`'s file size changed by the difference in tensor bytes."""
        if self.file_bytes is not None:
            return self.file_bytes
        if before.file_bytes is None:
            return None
        return before.file_bytes - before.tensor_bytes + self.tensor_bytes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"nodes": self.nodes, "node_count": self.node_count, "parameters": self.parameters,
                "tensor_bytes": self.tensor_bytes, "file_bytes": self.file_bytes}


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    found = []
    for node in graph.node:
        found.append(node)
        for sub in subgraphs(node):
            found.extend(_nodes(sub))
    return found


def model_stats(model: onnx.ModelProto, file_bytes: int | None = None) -> ModelStats:
    """Count `model`'s nodes and parameters; `file_bytes` is its size on disk, if known (`stored_bytes`)."""
    nodes = [*_nodes(model.graph), *(n for f in model.functions for n in f.node)]
    counts = Counter(n.op_type for n in nodes)
    parameters = sum(int(np.prod(t.dims, dtype=np.int64)) for t in all_tensors(model))
    return ModelStats(dict(sorted(counts.items())), parameters, in_memory_bytes(model), file_bytes)


def stored_bytes(path: str | os.PathLike, data: Iterable[Path]) -> int:
    """The size of the model file at `path` and of its external data files `data` (`external.data_files` of the
    model `load_model(path, keep_weights_on_disk=True)` returned: locations checked, resolved, not re-read)."""
    return Path(path).stat().st_size + sum(file.stat().st_size for file in data)
