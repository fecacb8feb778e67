"""Structural comparison of two models: are the protected normalizations of the reference intact?

Uses the fold engine's own classification and fingerprints (`foldnorm.fold.normalizations`), in every graph
the engine folds (main graph, If/Loop/Scan bodies, model-local functions): a GroupNorm, LayerNorm or
InstanceNorm node of the reference is `intact` in the candidate when a node with the same output exists
there, in the same graph, with the same op, wiring, attributes and parameter bytes (for a GroupNorm lowered
to Reshape → InstanceNormalization → Reshape → Mul → Add, every node of the chain). BatchNorms are counted
as the classifier names them. A changed node says what changed: its op, an input's wiring, an attribute (old and
new value) or a parameter (the largest absolute and relative difference of its values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper

from foldnorm.fold.normalizations import NormCounts, chain_fingerprints, classified, walk_graphs
from foldnorm.onnxgraph.external import tensor_array
from foldnorm.onnxgraph.graph import GraphIndex, node_label

NormStatus = Literal["intact", "changed", "missing"]


@dataclass
class NormCheck:
    """One protected normalization node of the reference, and what became of it in the candidate."""

    node: str
    op_type: str
    graph: str
    status: NormStatus
    #: what differs in a changed node (its chain included): op, input wiring, attributes, parameter values
    changes: list[str] = field(default_factory=list)


@dataclass
class StructureReport:
    """BatchNorm counts on both sides and the state of every protected normalization of the reference."""

    batchnorm_reference: int
    batchnorm_candidate: int
    protected: list[NormCheck] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """Every protected normalization of the reference is present and unchanged in the candidate."""
        return all(p.status == "intact" for p in self.protected)

    def summary(self) -> str:
        """One line: BatchNorm counts and the protected normalizations' state."""
        kept = sum(1 for p in self.protected if p.status == "intact")
        text = (f"BatchNorm: {self.batchnorm_reference} in reference, {self.batchnorm_candidate} in candidate; "
                f"GroupNorm/LayerNorm/InstanceNorm nodes intact: {kept}/{len(self.protected)}")
        bad = [f"{p.node} ({p.op_type}) {p.status}" + (f" ({p.changes[0]})" if p.changes else "")
               for p in self.protected if p.status != "intact"]
        return text + (f"; NOT intact: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "") if bad else "")

    def change_lines(self) -> list[str]:
        """One line per difference of each changed node: `X (InstanceNormalization): attribute epsilon: ...`."""
        return [f"{p.node} ({p.op_type}): {change}" for p in self.protected for change in p.changes]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "batchnorm_reference": self.batchnorm_reference,
            "batchnorm_candidate": self.batchnorm_candidate,
            "protected": [asdict(p) for p in self.protected],
            "intact": self.intact,
            "summary": self.summary(),
        }


@dataclass
class _Norm:
    """A protected node as surveyed: its chain's fingerprints and nodes, and the graph they are in."""

    fingerprints: tuple[str, ...]
    nodes: tuple[onnx.NodeProto, ...]
    index: GraphIndex


@dataclass
class _Survey:
    counts: NormCounts
    norms: dict[str, _Norm]  # keyed by the head node's `<graph path>:<output name>`


def _survey(model: onnx.ModelProto) -> _Survey:
    """Classify every node of every graph once: the counts by kind and the protected nodes' fingerprints."""
    kinds: list[str] = []
    norms: dict[str, _Norm] = {}
    for index, constants in walk_graphs(model):
        for node, info in classified(index, constants):
            kinds.append(info.kind)
            if info.protected:
                prints = chain_fingerprints(index, node, info)
                norms[next(iter(prints))] = _Norm(tuple(prints.values()), info.chain or (node,), index)
    return _Survey(NormCounts.of(kinds), norms)


def compare_structure(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> StructureReport:
    """Count BatchNorms on both sides and check every protected normalization of `reference` in `candidate`."""
    ref, cand = _survey(reference), _survey(candidate)
    report = StructureReport(ref.counts.batchnorm, cand.counts.batchnorm)
    for key, norm in ref.norms.items():
        head = norm.nodes[0]
        check = NormCheck(node_label(head), head.op_type, norm.index.path, "missing")
        other = cand.norms.get(key)
        if other is not None:
            check.status = "intact" if other.fingerprints == norm.fingerprints else "changed"
            if check.status == "changed":
                check.changes = _chain_changes(norm, other)
        report.protected.append(check)
    return report


def _chain_changes(ref: _Norm, cand: _Norm) -> list[str]:
    """What differs between the reference's chain and the candidate's, node by node."""
    if len(ref.nodes) != len(cand.nodes):
        return [f"its chain has {len(cand.nodes)} nodes instead of {len(ref.nodes)}"]
    changes = []
    for r, c in zip(ref.nodes, cand.nodes):
        where = "" if r is ref.nodes[0] else f"{r.op_type} {node_label(r)}: "
        changes += [where + change for change in _node_changes(r, ref.index, c, cand.index)]
    return changes


def _node_changes(ref: onnx.NodeProto, ref_index: GraphIndex, cand: onnx.NodeProto, cand_index: GraphIndex
                  ) -> list[str]:
    """The op, input wiring, attributes and parameter values that differ between two nodes."""
    if (ref.domain, ref.op_type) != (cand.domain, cand.op_type):
        return [f"op {ref.op_type} became {cand.op_type}"]
    changes = []
    ref_attrs = {a.name: helper.get_attribute_value(a) for a in ref.attribute}
    cand_attrs = {a.name: helper.get_attribute_value(a) for a in cand.attribute}
    for name in sorted(set(ref_attrs) | set(cand_attrs)):
        before, after = ref_attrs.get(name, "(unset)"), cand_attrs.get(name, "(unset)")
        if before != after:
            changes.append(f"attribute {name}: {before!r} -> {after!r}")
    for i in range(max(len(ref.input), len(cand.input))):
        a = ref.input[i] if i < len(ref.input) else ""
        b = cand.input[i] if i < len(cand.input) else ""
        tensors = ref_index.initializers.get(a), cand_index.initializers.get(b)
        if tensors[0] is not None and tensors[1] is not None:
            changes += _parameter_change(i, a, tensors[0], tensors[1])
        elif a != b:
            changes.append(f"input {i}: {a!r} -> {b!r}")
    return changes


def _parameter_change(i: int, name: str, ref: onnx.TensorProto, cand: onnx.TensorProto) -> list[str]:
    """`parameter 'scale' (input 1): max abs diff 0.1 (max rel 0.05)`, or a shape/type change; nothing if equal."""
    before, after = tensor_array(ref), tensor_array(cand)
    if before.shape != after.shape or before.dtype != after.dtype:
        return [f"parameter {name!r} (input {i}): {before.dtype.name}{list(before.shape)} -> "
                f"{after.dtype.name}{list(after.shape)}"]
    diff = np.abs(after.astype(np.float64) - before.astype(np.float64))
    if not diff.size or (not np.any(diff) and ref.name == cand.name):
        return []
    scale = float(np.max(np.abs(before.astype(np.float64)))) if before.size else 0.0
    worst = float(np.max(diff))
    if worst == 0:
        return [f"input {i}: {ref.name!r} -> {cand.name!r} (same values)"]
    rel = f" (max rel {worst / scale:.3g})" if scale > 0 else ""
    return [f"parameter {name!r} (input {i}): max abs diff {worst:.3g}{rel}"]
