"""Intermediate tensors of two models compared on ONNX Runtime, a bounded number of bytes at a time.

A tensor both models compute under the same name (the fold keeps the names of the tensors it does not remove)
is exposed as an extra graph output of each model, a pass at a time, never all at once: exposing every tensor
("mark all") keeps every activation alive and breaks fusions. A pass holds tensors whose bytes over every feed
(sized by shape inference at each feed's input shapes) stay within `TENSOR_BUDGET`; a tensor of unknown size
counts for `TENSOR_BUDGET / CHUNK`. Two models whose weights fit `TOGETHER_BUDGET` run a pass side by side, each
in a thread of its own on half the cores (ONNX Runtime spreads one small model over many cores poorly), every
feed compared as soon as both have run it. Bigger ones run one session at a time: the reference runs every feed
first and its exposed tensors are kept, then the candidate runs the same feeds. The first pass rides on the
comparison of the outputs themselves (`side_by_side` keeps them): the tensors of a model like ResNet-50 at batch
sizes 1 and 2 cost no extra run.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import helper

from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.shapes import weightless_copy
from foldnorm.onnxgraph.tensors import all_tensors, tensor_nbytes
from foldnorm.verify.measure import ErrorStats
from foldnorm.verify.ortrun import outputs

#: Bytes of exposed tensors one pass holds: the reference's, over every feed.
TENSOR_BUDGET = 512 << 20
#: Tensors of unknown size a pass holds (each counts for `TENSOR_BUDGET / CHUNK`); the localization's round size.
CHUNK = 32
#: The least a tensor counts for, so that a pass of many tiny tensors stays a bounded list.
MIN_BYTES = 4096
#: Two models whose weights take at most this many bytes in all run side by side (two sessions open at once).
TOGETHER_BUDGET = 512 << 20

Feed = dict[str, np.ndarray]
Runs = tuple[list[list[np.ndarray]], list[list[np.ndarray]]]


class Runner(Protocol):
    """What runs one model on a stream of feeds (`ortrun.outputs`, the default): each feed's outputs."""

    def __call__(self, source: onnx.ModelProto, model: onnx.ModelProto, workdir: Path, role: str, label: str,
                 draws: Iterator[Feed], *, threads: int = 0) -> Iterator[list[np.ndarray]]:
        """The outputs of `model` for each feed of `draws` (`role`: reference or candidate) on `threads`."""
        ...


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


def feed_shapes(feeds: Iterable[Feed]) -> list[dict[str, Shape]]:
    """The shape of every input of each feed."""
    return [{name: tuple(array.shape) for name, array in feed.items()} for feed in feeds]


def tensor_passes(model: onnx.ModelProto, names: Sequence[str], shapes: Sequence[Mapping[str, Shape]],
                  budget: int | None = None) -> list[list[str]]:
    """`names` (each once, in order) split into passes whose tensors take at most `budget` (`TENSOR_BUDGET`)
    bytes in `model` over all feeds, whose input shapes are `shapes` (a tensor bigger than the budget alone has a
    pass of its own)."""
    if not names:
        return []
    budget = TENSOR_BUDGET if budget is None else budget
    sizes = _tensor_bytes(model, shapes)
    passes: list[list[str]] = []
    used = budget
    for name in dict.fromkeys(names):
        cost = max(sizes.get(name, budget // CHUNK), MIN_BYTES)
        if used + cost > budget:
            passes.append([])
            used = 0
        passes[-1].append(name)
        used += cost
    return passes


def _tensor_bytes(model: onnx.ModelProto, shapes: Sequence[Mapping[str, Shape]]) -> dict[str, int]:
    """The bytes of each tensor of `model` over all feeds of input shapes `shapes`, where shape inference at those
    shapes proves them."""
    runs = Counter(tuple(sorted(feed.items())) for feed in shapes)
    total: dict[str, int] | None = None
    for run, count in runs.items():
        sizes = _inferred_bytes(model, dict(run))
        total = {name: (0 if total is None else total[name]) + count * size for name, size in sizes.items()
                 if total is None or name in total}
    return total or {}


def _inferred_bytes(model: onnx.ModelProto, shapes: Mapping[str, Shape]) -> dict[str, int]:
    """The bytes of each main-graph value whose type and shape inference proves when the inputs have `shapes`."""
    light = weightless_copy(model)
    for vi in light.graph.input:
        if vi.name in shapes and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in shapes[vi.name]:
                shape.dim.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError):
        return {}
    sizes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        itemsize = _itemsize(tt.elem_type)
        if vi.type.HasField("tensor_type") and tt.HasField("shape") and min(dims, default=0) >= 0 and itemsize:
            sizes[vi.name] = math.prod(dims) * itemsize
    return sizes


def _itemsize(elem_type: int) -> int | None:
    """Bytes per element of an ONNX element type (None: unknown, or strings)."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return None
    return None if dtype.kind == "O" else dtype.itemsize


def tensor_errors(reference: onnx.ModelProto, candidate: onnx.ModelProto, names: Sequence[str],
                  ref_draws: Iterable[Feed], cand_draws: Iterable[Feed], workdir: Path, *,
                  rtol: float | None = None, atol: float | None = None,
                  labels: tuple[str, str] = ("reference", "candidate"), run: Runner = outputs,
                  shapes: Sequence[Mapping[str, Shape]] | None = None) -> dict[str, ErrorStats]:
    """The error of every tensor in `names` (computed by both models) over all feeds, a pass at a time
    (`tensor_passes`).

    `ref_draws` and `cand_draws` are iterated once per pass (and `ref_draws` once more for the shapes, unless
    `shapes` gives them). Tolerances follow the candidate's dtype of each tensor (user overrides win). The models are
    given back as they came.
    """
    stats: dict[str, ErrorStats] = {}
    if not names:
        return stats
    shapes = feed_shapes(ref_draws) if shapes is None else shapes
    for names_in_pass in tensor_passes(reference, names, shapes):
        side_by_side(reference, candidate, names_in_pass, ref_draws, cand_draws, workdir, stats, rtol=rtol,
                     atol=atol, labels=labels, run=run)
    return stats


def side_by_side(reference: onnx.ModelProto, candidate: onnx.ModelProto, names: Sequence[str],
                 ref_draws: Iterable[Feed], cand_draws: Iterable[Feed], workdir: Path, stats: dict[str, ErrorStats],
                 *, rtol: float | None, atol: float | None, labels: tuple[str, str], keep: Sequence[str] = (),
                 run: Runner = outputs) -> Runs:
    """Run both models on every feed with `names` exposed and fold each tensor's error into `stats`: side by side
    when their weights fit `TOGETHER_BUDGET`, else the reference first (its tensors kept) and then the candidate,
    one session open at a time.

    Returns the tensors `keep` (e.g. the graph outputs) of every feed, from each model.
    """
    threads = threads_each(reference, candidate)
    wanted = {*names, *keep}
    kept: Runs = ([], [])
    with exposed(reference, names) as ref, exposed(candidate, names) as cand:
        ref_names = [o.name for o in ref.graph.output]
        cand_names = [o.name for o in cand.graph.output]
        ref_runs = run(ref, ref, workdir, "reference", labels[0], iter(ref_draws), threads=threads)
        held = ({name: out for name, out in zip(ref_names, ref_out) if name in wanted} for ref_out in ref_runs)
        with _Ahead(held) if threads else contextlib.nullcontext(_popped(deque(held))) as pending:
            for cand_out in run(cand, cand, workdir, "candidate", labels[1], iter(cand_draws), threads=threads):
                want, got = next(pending), dict(zip(cand_names, cand_out))  # each feed's tensors go once compared
                for name in names:
                    entry = stats.get(name) or stats.setdefault(
                        name, ErrorStats.for_dtype(name, got[name].dtype, rtol, atol))
                    entry.add(want[name], got[name])
                kept[0].append([want[n] for n in keep])
                kept[1].append([got[n] for n in keep])
    return kept


def _popped(items: deque[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """The items, each let go as it is taken."""
    while items:
        yield items.popleft()


def threads_each(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> int:
    """The intra-op threads of each of the two sessions when they run side by side: half the cores, when there
    are two or more and the models' weights fit `TOGETHER_BUDGET`; else 0 (one at a time, each on every core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    weights = sum(tensor_nbytes(t) for model in (reference, candidate) for t in all_tensors(model))
    return cores // 2 if cores >= 2 and weights <= TOGETHER_BUDGET else 0


class _Ahead:
    """The items of an iterator made in a thread of its own, ahead of the caller, who takes them with `next`.

    Leaving the `with` block stops the thread after the item it is making and waits for it. An exception the
    iterator raises is raised by `next` in the caller.
    """

    def __init__(self, items: Iterator[dict[str, np.ndarray]]) -> None:
        self._queue: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._make, args=(items,), name="foldnorm-reference", daemon=True)

    def _make(self, items: Iterator[dict[str, np.ndarray]]) -> None:
        try:
            for item in items:
                self._queue.put((True, item))
                if self._stop.is_set():
                    break
        except BaseException as exc:  # handed to the caller, who raises it
            self._queue.put((False, exc))
        else:
            self._queue.put((False, None))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # the session closes in this thread

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            try:
                made, value = self._queue.get(timeout=0.1)  # a timeout lets a signal handler run meanwhile
            except queue.Empty:
                continue
            if made:
                return value
            raise value if value is not None else RuntimeError("the reference gave fewer outputs than feeds")

    def __enter__(self) -> _Ahead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
