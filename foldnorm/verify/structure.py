"""Structural comparison of two models: are the protected normalizations of the reference intact?

Uses the fold engine's own classification and fingerprints (`foldnorm.fold.normalizations`): a GroupNorm,
LayerNorm or InstanceNorm node of the reference is `intact` in the candidate when a node with the same
output exists there with the same op, wiring, attributes and parameter bytes (for a GroupNorm lowered to
Reshape → InstanceNormalization → Reshape → Mul → Add, every node of the chain).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import onnx

from foldnorm.fold.normalizations import protected_groups
from foldnorm.onnxgraph.constants import ConstantResolver
from foldnorm.onnxgraph.graph import GraphIndex, node_label, subgraphs

NormStatus = Literal["intact", "changed", "missing"]


@dataclass
class NormCheck:
    """One protected normalization node of the reference, and what became of it in the candidate."""

    node: str
    op_type: str
    graph: str
    status: NormStatus


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
        bad = [f"{p.node} ({p.op_type}) {p.status}" for p in self.protected if p.status != "intact"]
        return text + (f"; NOT intact: {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else "") if bad else "")

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
class _Survey:
    batchnorm: int = 0
    # head node key -> (fingerprints of the node and the nodes of its chain, label, op_type, graph)
    norms: dict[str, tuple[tuple[str, ...], str, str, str]] = field(default_factory=dict)


def _survey(graph: onnx.GraphProto, outer: GraphIndex | None, outer_constants: ConstantResolver | None, path: str,
            into: _Survey) -> None:
    index = GraphIndex(graph, outer, path)
    constants = ConstantResolver(index, outer_constants)
    groups = protected_groups(index, constants)
    for node in index.nodes:
        if node.op_type == "BatchNormalization":
            into.batchnorm += 1
        prints = groups.get(id(node))
        if prints is not None:
            into.norms[next(iter(prints))] = (tuple(prints.values()), node_label(node), node.op_type, path)
        for k, sub in enumerate(subgraphs(node)):
            _survey(sub, index, constants, f"{path}/{node_label(node)}[{k}]", into)


def compare_structure(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> StructureReport:
    """Count BatchNorms on both sides and check every protected normalization of `reference` in `candidate`."""
    ref, cand = _Survey(), _Survey()
    _survey(reference.graph, None, None, "main", ref)
    _survey(candidate.graph, None, None, "main", cand)
    report = StructureReport(ref.batchnorm, cand.batchnorm)
    for key, (fingerprints, label, op_type, graph) in ref.norms.items():
        status: NormStatus = ("missing" if key not in cand.norms
                              else "intact" if cand.norms[key][0] == fingerprints else "changed")
        report.protected.append(NormCheck(label, op_type, graph, status))
    return report
