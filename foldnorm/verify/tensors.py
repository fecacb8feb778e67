"""Intermediate tensors of two models compared on ONNX Runtime, a bounded number at a time.

A tensor both models compute under the same name (the fold keeps the names of the tensors it does not remove)
is exposed as an extra graph output of each model, `CHUNK` tensors per pair of sessions, never all at once:
exposing every tensor ("mark all") keeps every activation alive and breaks fusions. The two sessions of a chunk
are open together and every feed is compared as soon as both have run it, so memory stays near two plain
sessions plus one feed's exposed tensors. The first chunk rides on the comparison of the outputs themselves
(`side_by_side` keeps them): up to `CHUNK` tensors cost no extra run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from foldnorm.verify.measure import ErrorStats
from foldnorm.verify.ortrun import outputs

#: Tensors exposed per pair of sessions.
CHUNK = 32

Feed = dict[str, np.ndarray]
Runs = tuple[list[list[np.ndarray]], list[list[np.ndarray]]]
#: What runs one model on a stream of feeds (`ortrun.outputs`, the default): (source, model, workdir, role, label,
#: feeds) -> each feed's outputs.
Runner = Callable[[onnx.ModelProto, onnx.ModelProto, Path, str, str, Iterator[Feed]], Iterator[list[np.ndarray]]]


def produced_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors the main graph's nodes compute, in graph (topological) order; Constant nodes' left out."""
    return [out for node in model.graph.node if node.op_type != "Constant" for out in node.output if out]


@contextlib.contextmanager
def exposed(model: onnx.ModelProto, names: Sequence[str]) -> Iterator[onnx.ModelProto]:
    """`model` with `names` added as graph outputs for the duration (no copy of the weights)."""
    present = {o.name for o in model.graph.output}
    added = [name for name in dict.fromkeys(names) if name not in present]
    for name in added:
        model.graph.output.add().name = name
    try:
        yield model
    finally:
        del model.graph.output[len(model.graph.output) - len(added):]


def tensor_errors(reference: onnx.ModelProto, candidate: onnx.ModelProto, names: Sequence[str],
                  ref_draws: Iterable[Feed], cand_draws: Iterable[Feed], workdir: Path, *,
                  rtol: float | None = None, atol: float | None = None, chunk: int = CHUNK,
                  labels: tuple[str, str] = ("reference", "candidate"), run: Runner = outputs
                  ) -> dict[str, ErrorStats]:
    """The error of every tensor in `names` (computed by both models) over all feeds, `chunk` tensors at a time.

    `ref_draws` and `cand_draws` are iterated once per chunk. Tolerances follow the candidate's dtype of each
    tensor (user overrides win). The models are given back as they came.
    """
    stats: dict[str, ErrorStats] = {}
    unique = list(dict.fromkeys(names))
    for start in range(0, len(unique), chunk):
        side_by_side(reference, candidate, unique[start:start + chunk], ref_draws, cand_draws, workdir, stats,
                     rtol=rtol, atol=atol, labels=labels, run=run)
    return stats


def side_by_side(reference: onnx.ModelProto, candidate: onnx.ModelProto, names: Sequence[str],
                 ref_draws: Iterable[Feed], cand_draws: Iterable[Feed], workdir: Path, stats: dict[str, ErrorStats],
                 *, rtol: float | None, atol: float | None, labels: tuple[str, str], keep: Sequence[str] = (),
                 run: Runner = outputs) -> Runs:
    """Run both models together with `names` exposed, feed by feed, and fold each tensor's error into `stats`.

    Returns the tensors `keep` (e.g. the graph outputs) of every feed, from each model.
    """
    kept: Runs = ([], [])
    with exposed(reference, names) as ref, exposed(candidate, names) as cand:
        ref_names = [o.name for o in ref.graph.output]
        cand_names = [o.name for o in cand.graph.output]
        ref_runs = run(ref, ref, workdir, "reference", labels[0], iter(ref_draws))
        cand_runs = run(cand, cand, workdir, "candidate", labels[1], iter(cand_draws))
        for ref_out in ref_runs:  # both sessions open together, one feed at a time
            cand_out = next(cand_runs)
            want, got = dict(zip(ref_names, ref_out)), dict(zip(cand_names, cand_out))
            for name in names:
                entry = stats.get(name) or stats.setdefault(
                    name, ErrorStats.for_dtype(name, got[name].dtype, rtol, atol))
                entry.add(want[name], got[name])
            kept[0].append([want[n] for n in keep])
            kept[1].append([got[n] for n in keep])
        next(cand_runs, None)  # past its last feed: the candidate's session closes
    return kept
