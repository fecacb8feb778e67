"""Where two models first diverge: a search over the tensors both compute, in topological order.

The tensors considered are those both models compute under the same name that feed a failing output in the
reference, ordered as the reference computes them. Each round exposes up to `CHUNK` of them, evenly spaced over
the range still in question, on both models (`verify.tensors`), and compares them over every feed; the first one
out of tolerance and the last one within it before it bound the next round. The search ends at a tensor that is
out of tolerance right after one that is not: the first divergence, as far as the names allow (a tensor that only
one model computes cannot be compared). Rounds grow as log(n) / log(CHUNK + 1) in the n tensors compared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from foldnorm.fold.normalizations import module_path
from foldnorm.onnxgraph.graph import node_label
from foldnorm.verify.measure import ErrorStats
from foldnorm.verify.tensors import CHUNK, produced_tensors, tensor_errors


@dataclass
class InputError:
    """One input of the diverging node and its error (None when it cannot be compared)."""

    name: str
    kind: str  # "tensor", "graph input", "constant", "candidate only"
    error: ErrorStats | None = None

    def describe(self) -> str:
        """`x: max abs 0.1, max rel 0.01 (FAIL)`, or its kind when it has no error."""
        if self.error is None:
            return f"{self.name}: {self.kind}"
        return f"{self.name}: {_describe(self.error)}"


@dataclass
class Localization:
    """The first tensor where the candidate diverges from the reference, with the nodes that compute it."""

    tensor: str | None
    position: int
    compared: int
    rounds: int
    error: ErrorStats | None = None
    candidate_node: str | None = None
    candidate_op: str | None = None
    reference_node: str | None = None
    reference_op: str | None = None
    module: str | None = None
    inputs: list[InputError] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The readable form: where, which nodes, the error there and at the node's inputs."""
        if self.tensor is None or self.error is None:
            return [f"localize: no tensor both models compute diverges ({self.compared} compared); the models "
                    "share too few tensor names to localize further"]
        rounds = f"{self.rounds} round" + ("s" if self.rounds != 1 else "")
        lines = [f"localize: first divergence at tensor {self.tensor!r} (number {self.position + 1} of "
                 f"{self.compared} tensors both models compute, {rounds} of at most {CHUNK} tensors)",
                 f"  candidate node: {self.candidate_node} ({self.candidate_op})",
                 f"  reference node: {self.reference_node} ({self.reference_op})",
                 f"  module: {self.module or '-'}",
                 f"  error there: {_describe(self.error)}"]
        lines += [f"  input {i.describe()}" for i in self.inputs]
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = asdict(self)
        data["error"] = _stats_dict(self.error)
        data["inputs"] = [{"name": i.name, "kind": i.kind, "error": _stats_dict(i.error)} for i in self.inputs]
        return data


def _stats_dict(stats: ErrorStats | None) -> dict[str, Any] | None:
    return None if stats is None else asdict(stats) | {"ok": stats.ok}


def _describe(stats: ErrorStats) -> str:
    return (f"max abs {stats.max_abs:.3g}, max rel {stats.max_rel:.3g}, {stats.mismatched}/{stats.total} outside "
            f"rtol={stats.rtol:g} atol={stats.atol:g} ({'ok' if stats.ok else 'FAIL'})")


def localize(reference: onnx.ModelProto, candidate: onnx.ModelProto, failing: Sequence[str],
             ref_feeds: Sequence[Mapping[str, np.ndarray]], cand_feeds: Sequence[Mapping[str, np.ndarray]],
             workdir: Path, *, rtol: float | None = None, atol: float | None = None,
             chunk: int = CHUNK) -> Localization:
    """Find the first tensor in `reference`'s topological order, among those both models compute and that feed
    the `failing` outputs, where `candidate` is out of tolerance over the feeds."""
    common = _common_tensors(reference, candidate, failing)
    errors: dict[str, ErrorStats] = {}

    def measure(names: Sequence[str]) -> None:
        wanted = [n for n in names if n not in errors]
        if wanted:
            errors.update(tensor_errors(reference, candidate, wanted, ref_feeds, cand_feeds, workdir,
                                        rtol=rtol, atol=atol, chunk=chunk))

    lo, hi, rounds = 0, len(common), 0
    while lo < hi:
        span = hi - lo
        probes = list(range(lo, hi)) if span <= chunk else sorted({lo + span * i // chunk for i in range(chunk)})
        measure([common[i] for i in probes])
        rounds += 1
        bad = next((i for i in probes if not errors[common[i]].ok), None)
        if bad is None:
            lo = probes[-1] + 1
            continue
        hi = bad
        lo = max([i + 1 for i in probes if i < bad], default=lo)
    if hi >= len(common):
        return Localization(None, hi, len(common), rounds)
    return _describe_divergence(reference, candidate, common, hi, rounds, errors, measure)


def _common_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto, failing: Sequence[str]) -> list[str]:
    """Tensors both main graphs compute, that feed a failing output of the reference, in the reference's order."""
    in_candidate = set(produced_tensors(candidate))
    producers = {out: node for node in reference.graph.node for out in node.output}
    ancestors: set[str] = set()
    stack = list(failing)
    while stack:
        name = stack.pop()
        if name in ancestors:
            continue
        ancestors.add(name)
        node = producers.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return [t for t in produced_tensors(reference) if t in in_candidate and t in ancestors]


def _describe_divergence(reference: onnx.ModelProto, candidate: onnx.ModelProto, common: list[str], position: int,
                         rounds: int, errors: dict[str, ErrorStats], measure: Any) -> Localization:
    tensor = common[position]
    cand_node = next(n for n in candidate.graph.node if tensor in n.output)
    ref_node = next(n for n in reference.graph.node if tensor in n.output)
    comparable = set(common) | set(produced_tensors(reference))
    in_candidate = set(produced_tensors(candidate))
    graph_inputs = {i.name for i in candidate.graph.input}
    constants = {t.name for t in candidate.graph.initializer} | {
        o for n in candidate.graph.node if n.op_type == "Constant" for o in n.output}
    names = [i for i in cand_node.input if i]
    measure([i for i in names if i in comparable and i in in_candidate])
    inputs = []
    for name in names:
        if name in errors:
            inputs.append(InputError(name, "tensor", errors[name]))
        else:
            kind = ("graph input" if name in graph_inputs else "constant" if name in constants
                    else "candidate only")
            inputs.append(InputError(name, kind))
    return Localization(tensor, position, len(common), rounds, errors[tensor], node_label(cand_node),
                        cand_node.op_type, node_label(ref_node), ref_node.op_type,
                        module_path(cand_node) or module_path(ref_node), inputs)
