"""Where two models first diverge: a search over the tensors both compute, in topological order.

Only tensors both models compute under the same name can be compared. The search suspects the earliest failing
output and looks among the tensors it is computed from: each round exposes up to `CHUNK` of them, evenly spaced
in the reference's topological order, on both models (`verify.tensors`) and compares them over every feed. The
earliest one out of tolerance becomes the suspect (the search goes on among its own ancestors); one within
tolerance clears itself and what it is computed from. The search ends at a suspect whose comparable ancestors are
all within tolerance: the first divergence, as far as the names allow. Branches beside the suspect never mislead
it, and on a chain it is a (CHUNK + 1)-ary search.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from foldnorm.fold.normalizations import module_path
from foldnorm.onnxgraph.graph import node_label
from foldnorm.verify.measure import ErrorStats
from foldnorm.verify.tensors import CHUNK, feed_shapes, produced_tensors, tensor_errors


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
             ref_feeds: Iterable[dict[str, np.ndarray]], cand_feeds: Iterable[dict[str, np.ndarray]],
             workdir: Path, *, rtol: float | None = None, atol: float | None = None,
             chunk: int = CHUNK) -> Localization:
    """Find the first tensor, in `reference`'s topological order, among those both models compute, where `candidate`
    is out of tolerance over the feeds while every tensor it is computed from is within it.

    The search starts at the earliest of the `failing` outputs and only ever looks at the ancestors of the
    tensor it suspects, so branches that run beside it in the graph's order do not mislead it. The feeds are
    iterated once per round (`compare.Draws` draws random ones anew each time).
    """
    order = {t: i for i, t in enumerate(_ordered_tensors(reference))}
    producers = {out: node for node in reference.graph.node for out in node.output if out}
    in_candidate = set(produced_tensors(candidate))
    common = [t for t in order if t in in_candidate]
    errors: dict[str, ErrorStats] = {}
    shapes = feed_shapes(ref_feeds)

    def ancestors(name: str) -> set[str]:
        return _ancestors(name, producers) & set(common)

    def measure(names: list[str]) -> None:
        errors.update(tensor_errors(reference, candidate, [n for n in names if n not in errors], ref_feeds,
                                    cand_feeds, workdir, rtol=rtol, atol=atol, shapes=shapes))

    suspect = min((f for f in failing if f in order), key=order.__getitem__, default=None)
    if suspect is None:
        return Localization(None, 0, 0, 0)
    pool = sorted(ancestors(suspect), key=order.__getitem__)
    rounds = 0
    while pool:
        probes = pool if len(pool) <= chunk else [pool[len(pool) * i // chunk] for i in range(chunk)]
        measure(probes)
        rounds += 1
        cleared = set(probes)
        for probe in probes:
            if errors[probe].ok:
                cleared |= ancestors(probe)
        bad = next((p for p in probes if not errors[p].ok), None)
        if bad is not None:
            suspect = bad
            keep = ancestors(bad) - cleared
        else:
            keep = set(pool) - cleared
        pool = [t for t in pool if t in keep]
    measure([suspect])
    return _describe_divergence(reference, candidate, suspect, (common.index(suspect), len(common), rounds), errors,
                                measure)


def _ordered_tensors(model: onnx.ModelProto) -> list[str]:
    """The main graph's computed tensors in topological order (`produced_tensors`), each once."""
    return list(dict.fromkeys(produced_tensors(model)))


def _ancestors(name: str, producers: Mapping[str, onnx.NodeProto]) -> set[str]:
    """Every tensor `name` is computed from (not `name` itself)."""
    seen: set[str] = set()
    stack = [i for i in producers[name].input if i] if name in producers else []
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        node = producers.get(current)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return seen


def _describe_divergence(reference: onnx.ModelProto, candidate: onnx.ModelProto, tensor: str,
                         where: tuple[int, int, int], errors: dict[str, ErrorStats],
                         measure: Callable[[list[str]], None]) -> Localization:
    """The localization at `tensor` (`where`: its position, the tensors compared, the rounds), with the errors at
    the inputs of the candidate's node that computes it."""
    cand_node = next(n for n in candidate.graph.node if tensor in n.output)
    ref_node = next(n for n in reference.graph.node if tensor in n.output)
    comparable = set(produced_tensors(reference))
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
    return Localization(tensor, *where, errors[tensor], node_label(cand_node),
                        cand_node.op_type, node_label(ref_node), ref_node.op_type,
                        module_path(cand_node) or module_path(ref_node), inputs)
