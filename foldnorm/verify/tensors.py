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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from foldnorm.errors import InputSpecError, first_line
from foldnorm.onnxgraph.external import has_weights_on_disk
from foldnorm.onnxgraph.modelio import ModelLike, needs_external_data
from foldnorm.verify.measure import ErrorStats

if TYPE_CHECKING:
    from foldnorm.bench.backends.ort_cpu import OrtSession

#: Tensors exposed per pair of sessions.
CHUNK = 32

Feed = Mapping[str, np.ndarray]


def session_source(source: ModelLike | None, model: onnx.ModelProto, workdir: Path, name: str) -> str | bytes:
    """What ONNX Runtime opens: the file `source` itself, the serialized `model`, or a copy written to `workdir`
    (a model whose weights stay on disk, or one too big to serialize)."""
    if source is not None and not isinstance(source, onnx.ModelProto):
        return str(source)
    if not has_weights_on_disk(model) and not needs_external_data(model):
        return model.SerializeToString()
    from foldnorm.onnxgraph.modelio import save_model

    return str(save_model(model, workdir / f"{name}.onnx", external_data=True))


def run_feeds(source: ModelLike | None, model: onnx.ModelProto, workdir: Path, role: str, label: str,
              feeds: Sequence[Feed]) -> list[list[np.ndarray]]:
    """Outputs of `model` for every feed, in one session (so two big models are never both loaded)."""
    with open_session(source, model, workdir, role, label) as session:
        return [_run(session, feed, role, label) for feed in feeds]


@contextlib.contextmanager
def open_session(source: ModelLike | None, model: onnx.ModelProto, workdir: Path, role: str, label: str
                 ) -> Iterator[OrtSession]:
    """An ONNX Runtime CPU session (optimizations disabled) on `model`."""
    from foldnorm.bench.backends.ort_cpu import OrtSession

    with OrtSession(session_source(source, model, workdir, role)) as session:
        yield session


def _run(session: OrtSession, feed: Feed, role: str, label: str) -> list[np.ndarray]:
    try:
        return session.run(feed)
    except Exception as exc:  # ORT raises untyped errors for inputs the graph cannot take
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise InputSpecError(f"{label}: ONNX Runtime cannot run the {role} on these inputs ({first_line(exc)}); "
                             "give shapes the model accepts (--shape NAME:1x3x224x224)") from None


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
                  ref_feeds: Sequence[Feed], cand_feeds: Sequence[Feed], workdir: Path, *,
                  rtol: float | None = None, atol: float | None = None, chunk: int = CHUNK,
                  labels: tuple[str, str] = ("reference", "candidate")) -> dict[str, ErrorStats]:
    """The error of every tensor in `names` (computed by both models) over all feeds, `chunk` tensors at a time.

    Tolerances follow the candidate's dtype of each tensor (user overrides win). The models are given back as
    they came.
    """
    stats: dict[str, ErrorStats] = {}
    unique = list(dict.fromkeys(names))
    for start in range(0, len(unique), chunk):
        side_by_side(reference, candidate, unique[start:start + chunk], ref_feeds, cand_feeds, workdir, stats,
                     rtol=rtol, atol=atol, labels=labels)
    return stats


def side_by_side(reference: onnx.ModelProto, candidate: onnx.ModelProto, names: Sequence[str],
                 ref_feeds: Sequence[Feed], cand_feeds: Sequence[Feed], workdir: Path, stats: dict[str, ErrorStats],
                 *, rtol: float | None, atol: float | None, labels: tuple[str, str],
                 keep: Sequence[str] = ()) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Run both models together with `names` exposed, feed by feed, and fold each tensor's error into `stats`.

    Returns the tensors `keep` (e.g. the graph outputs) of every feed, from each model.
    """
    kept: tuple[list[list[np.ndarray]], list[list[np.ndarray]]] = ([], [])
    with exposed(reference, names) as ref, exposed(candidate, names) as cand, \
            open_session(None, ref, workdir, "reference", labels[0]) as ref_session, \
            open_session(None, cand, workdir, "candidate", labels[1]) as cand_session:
        ref_names = [o.name for o in ref.graph.output]
        cand_names = [o.name for o in cand.graph.output]
        for ref_feed, cand_feed in zip(ref_feeds, cand_feeds):
            want = dict(zip(ref_names, _run(ref_session, ref_feed, "reference", labels[0])))
            got = dict(zip(cand_names, _run(cand_session, cand_feed, "candidate", labels[1])))
            for name in names:
                entry = stats.get(name) or stats.setdefault(
                    name, ErrorStats.for_dtype(name, got[name].dtype, rtol, atol))
                entry.add(want[name], got[name])
            kept[0].append([want[n] for n in keep])
            kept[1].append([got[n] for n in keep])
    return kept
