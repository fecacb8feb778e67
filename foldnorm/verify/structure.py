"""Structural comparison of two models: are the protected normalizations of the reference intact?

Uses the fold engine's own classification and fingerprints (`foldnorm.fold.normalizations`), in every graph
the engine folds (main graph, If/Loop/Scan bodies, model-local functions): a GroupNorm, LayerNorm or
InstanceNorm node of the reference is `intact` in the candidate when a node with the same output exists
there, in the same graph, with the same op, wiring, attributes and parameter bytes (for a GroupNorm lowered
to Reshape → InstanceNormalization → Reshape → Mul → Add, every node of the chain). BatchNorms are counted
as the classifier names them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import onnx

from foldnorm.fold.normalizations import NormCounts, chain_fingerprints, classified, walk_graphs
from foldnorm.onnxgraph.graph import node_label

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
    counts: NormCounts
    # head node key -> (fingerprints of the node and the nodes of its chain, label, op_type, graph)
    norms: dict[str, tuple[tuple[str, ...], str, str, str]]


def _survey(model: onnx.ModelProto) -> _Survey:
    """Classify every node of every graph once: the counts by kind and the protected nodes' fingerprints."""
    kinds: list[str] = []
    norms: dict[str, tuple[tuple[str, ...], str, str, str]] = {}
    for index, constants in walk_graphs(model):
        for node, info in classified(index, constants):
            kinds.append(info.kind)
            if info.protected:
                prints = chain_fingerprints(index, node, info)
                norms[next(iter(prints))] = (tuple(prints.values()), node_label(node), node.op_type, index.path)
    return _Survey(NormCounts.of(kinds), norms)


def compare_structure(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> StructureReport:
    """Count BatchNorms on both sides and check every protected normalization of `reference` in `candidate`."""
    ref, cand = _survey(reference), _survey(candidate)
    report = StructureReport(ref.counts.batchnorm, cand.counts.batchnorm)
    for key, (fingerprints, label, op_type, graph) in ref.norms.items():
        status: NormStatus = ("missing" if key not in cand.norms
                              else "intact" if cand.norms[key][0] == fingerprints else "changed")
        report.protected.append(NormCheck(label, op_type, graph, status))
    return report
