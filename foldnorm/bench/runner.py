"""Benchmark folded against unfolded: latency and accuracy per backend, configuration, precision and batch size.

Backends that cannot run here are reported before anything is prepared. Inputs are generated once per batch
size and reused by every row. Both variants of one configuration are timed by the one interleaved loop in
`foldnorm.bench.timing`. Every row's outputs are compared with the reference: the unfolded model on ONNX
Runtime, CPU, optimizations disabled, in the model's own precision.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import onnx

from foldnorm.bench.backends import get_backend
from foldnorm.bench.backends.base import (
    Availability,
    Backend,
    OpenOptions,
    OptionsT,
    OptLevel,
    Precision,
    RunOptions,
    Session,
)
from foldnorm.bench.environment import check_threads, environment, load_note
from foldnorm.bench.int8 import int8_notes, model_pairs
from foldnorm.bench.progress import Eta, Progress, Step
from foldnorm.bench.result import BenchResult, BenchRow
from foldnorm.bench.speedup import speedup_stats
from foldnorm.bench.timing import Timed, TimingOptions, time_interleaved
from foldnorm.bench.workload import Workload, model_stats, plan_workload, precision_label
from foldnorm.errors import BackendUnavailableError
from foldnorm.export.exporter import Exporter
from foldnorm.export.sources import InputShapes, ModelArg, ModelSource, is_onnx_path, resolve_source
from foldnorm.fold.engine import fold_model
from foldnorm.fold.report import FoldReport
from foldnorm.onnxgraph.atomicfile import temporary_directory
from foldnorm.onnxgraph.modelio import load_model, save_model
from foldnorm.verify.compare import compare_models, measure_error

if TYPE_CHECKING:
    import torch
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

VARIANTS = ("unfolded", "folded")
NEEDS_MODULE = Availability(False, "needs a PyTorch model (a built-in name, package.module:attr or an nn.Module), "
                                   "not an ONNX model")

DataclassT = TypeVar("DataclassT", bound="DataclassInstance")
#: One configuration to time: batch size, backend, its open options, and what it runs ("module", or the key of
#: a model pair: "fp32" for the model as given, "int8" for its quantized pair).
Job = tuple[int, "Backend[Any]", OpenOptions, str]


def benchmark(
    model: ModelArg,
    *,
    example_inputs: Sequence[torch.Tensor] | None = None,
    backends: Sequence[str] = ("ort-cpu",),
    options: RunOptions | None = None,
    timing: TimingOptions | None = None,
    batch_size: int | Sequence[int] = 1,
    input_shapes: InputShapes | None = None,
    seed: int = 0,
    exporter: Exporter = "dynamo",
    opset: int = 18,
    progress: Progress | None = None,
    ort_opt: Sequence[OptLevel] | None = None,
    precisions: Sequence[Precision] | None = None,
    threads: int | None = None,
    max_batch_size: int | None = None,
    cache_dir: Path | str | None = None,
    cuda_graph: bool | None = None,
    warmup: int | None = None,
    min_time_s: float | None = None,
    iterations: int | None = None,
) -> BenchResult:
    """Fold `model` and time both variants on each backend, at each batch size.

    `model` is an .onnx path or an `onnx.ModelProto`, a built-in name, an import spec `package.module:attr`,
    or an `nn.Module`; a PyTorch model is exported with `example_inputs`, else with random inputs of
    `input_shapes` (one shape per input in order, or `{name: shape}`), else a built-in model's own. For an ONNX
    model `input_shapes` size its dynamic dims. `batch_size` is one size or several (a sweep: rows per batch);
    a model whose batch axis is static runs at its own batch only, and a note says so. `backends` are registry
    names or "all". `options` (what to run: optimization levels, precisions, threads, TensorRT profile and
    cache) and `timing` (warm-up, minimum time, exact iterations) default to `RunOptions()` and
    `TimingOptions()`; the keywords after `progress` are conveniences that replace single fields of those
    objects (None: keep it). Backends that cannot run here are listed in `unavailable` with the reason and an
    install hint (and reported to `progress` before anything is prepared); asking only for unavailable
    backends raises `BackendUnavailableError`. `precisions` apply to GPU backends; other rows run in the
    model's own precision and are labelled with it.
    """
    from foldnorm.bench.backends import BACKENDS

    options = _replaced(options or RunOptions(), ort_opt=ort_opt, precisions=precisions, threads=threads,
                        max_batch_size=max_batch_size, cache_dir=cache_dir, cuda_graph=cuda_graph)
    timing = _replaced(timing or TimingOptions(), warmup=warmup, min_time_s=min_time_s, iterations=iterations)
    check_threads(options.threads)
    names = list(BACKENDS) if "all" in backends else list(dict.fromkeys(backends))
    say: Progress = progress or (lambda _step: None)
    from_module = not (isinstance(model, onnx.ModelProto) or
                       (isinstance(model, (str, os.PathLike)) and is_onnx_path(os.fspath(model))))
    runnable, unavailable = _available([get_backend(n) for n in names], from_module, say)
    batch_sizes = [batch_size] if isinstance(batch_size, int) else list(batch_size)
    with temporary_directory() as tmp:
        work = Path(tmp)
        say(Step(f"exporting {_describe_model(model)} to ONNX ({exporter}, opset {opset})" if from_module
                 else f"loading {_describe_model(model)}"))
        source = resolve_source(model, work, example_inputs=example_inputs, input_shapes=input_shapes, opset=opset,
                                exporter=exporter)
        unfolded = load_model(source.onnx_path)
        say(Step("folding"))
        folded = fold_model(unfolded)
        paths = {"unfolded": str(source.onnx_path), "folded": str(save_model(folded.model, work / "folded.onnx"))}
        workload = plan_workload(unfolded, batch_sizes, None if from_module else input_shapes)
        say(Step(f"verifying the fold at batch sizes {', '.join(map(str, workload.verify_batch_sizes()))}"))
        verify = compare_models(unfolded, folded.model, batch_sizes=workload.verify_batch_sizes(),
                                shapes=workload.shapes)
        pairs, int8 = model_pairs(unfolded, paths, options.precisions, work, workload, seed, say)
        subject = Subject(source, unfolded, pairs, workload, precision_label(unfolded))
        rows, torch_report = _run_jobs(_jobs(runnable, options, workload, pairs), subject, timing, seed, say,
                                       unavailable)
        if not rows and unavailable:
            raise BackendUnavailableError("; ".join(f"{k} {v}" for k, v in unavailable.items()))
        notes = [n for n in (workload.note, load_note(options.threads), *int8_notes(pairs, int8)) if n]
        models = {"unfolded": model_stats(unfolded), "folded": model_stats(folded.model)}
        return BenchResult(source.label, list(workload.batch_sizes), subject.precision, rows, folded.report, verify,
                           models, unavailable, environment(), notes, torch_report, int8)


@dataclass(frozen=True)
class Subject:
    """The model being benchmarked: where it came from, its unfolded form, the unfolded/folded files per model
    precision (`pairs`), what to feed it and the precision of its own (the label of rows run as given)."""

    source: ModelSource
    unfolded: onnx.ModelProto
    pairs: Mapping[Precision, dict[str, str]]
    workload: Workload
    precision: str

    def feeds_and_reference(self, batch: int, seed: int) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Seeded inputs at `batch`, and the reference outputs: the model as given, unfolded, on ONNX Runtime CPU
        with optimizations off."""
        from foldnorm.bench.backends.ort_cpu import OrtSession

        feeds = self.workload.feeds(self.unfolded, batch, seed)
        with OrtSession(str(self.source.onnx_path)) as session:
            return feeds, session.run(feeds)


def _jobs(backends: Sequence[Backend[Any]], options: RunOptions, workload: Workload,
          pairs: Mapping[Precision, dict[str, str]]) -> list[Job]:
    """Every (batch size, backend, configuration, what it runs) to time: a module backend runs the module; an
    ONNX backend runs each model pair (float, int8) in each of its configurations, an int8 pair only in those
    that run models as given (fp32)."""
    float_options = replace(options, precisions=tuple(p for p in options.precisions if p != "int8"))
    jobs: list[Job] = []
    for batch in workload.batch_sizes:
        for backend in backends:
            for cfg in backend.configs(float_options, workload.inputs(batch)):
                if backend.source == "module":
                    jobs.append((batch, backend, cfg, "module"))
                    continue
                jobs += [(batch, backend, replace(cfg, precision=p), p) for p in pairs
                         if cfg.precision == "fp32" or p == "fp32"]
    return jobs


def _describe_model(model: ModelArg) -> str:
    """How progress lines name the model."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return "the ONNX model" if isinstance(model, onnx.ModelProto) else type(model).__name__


def _available(backends: Sequence[Backend[Any]], from_module: bool,
               say: Progress) -> tuple[list[Backend[Any]], dict[str, str]]:
    """The backends that can run here, and why each other cannot (reported at once, before any preparation);
    raises `BackendUnavailableError` when none can."""
    runnable, unavailable = [], {}
    for backend in backends:
        status = backend.availability()
        if status.ok and backend.source == "module" and not from_module:
            status = NEEDS_MODULE
        if status.ok:
            runnable.append(backend)
            continue
        log.info("skipping %s: %s", backend.name, status.message())
        unavailable[backend.name] = status.message()
        say(Step(f"skipping {backend.name}: {status.message()}"))
    if not runnable:
        raise BackendUnavailableError("; ".join(f"{k} {v}" for k, v in unavailable.items()))
    return runnable, unavailable


def _run_jobs(jobs: Sequence[Job], subject: Subject, timing: TimingOptions, seed: int, say: Progress,
              unavailable: dict[str, str]) -> tuple[list[BenchRow], FoldReport | None]:
    """Time every (batch size, backend, configuration) in turn, with `config k of N` and an ETA on `say`.

    Inputs and reference outputs are made once per batch size. A configuration the backend cannot open after
    all goes to `unavailable`."""
    targets: dict[str, dict[str, Any]] = {str(k): v for k, v in subject.pairs.items()}
    torch_report = None
    rows: list[BenchRow] = []
    eta = Eta(len(jobs))
    inputs: tuple[int, dict[str, np.ndarray], list[np.ndarray]] | None = None
    for k, (batch, backend, cfg, target) in enumerate(jobs, 1):
        if inputs is None or inputs[0] != batch:
            inputs = (batch, *subject.feeds_and_reference(batch, seed))
        _, feeds, reference = inputs
        if target == "module" and "module" not in targets:
            say(Step("folding the PyTorch module"))
            targets["module"], torch_report = _module_variants(subject.source, feeds)

        def tell(action: str, fraction: float | None = None, k: int = k) -> None:
            say(Step(f"config {k} of {len(jobs)}: {action}", fraction, eta.left(fraction)))

        precision = subject.precision if cfg.precision == "fp32" else cfg.precision
        eta.start()
        try:
            rows.extend(_bench_config(backend, cfg, targets[target], feeds, reference, batch, precision, timing,
                                      tell, eta))
        except BackendUnavailableError as exc:
            unavailable[f"{backend.name} {cfg.label()}".rstrip()] = str(exc).removeprefix(f"{backend.name} ")
            eta.finish(timed=False)
        else:
            eta.finish()
    return rows, torch_report


def _replaced(base: DataclassT, **given: Any) -> DataclassT:
    """`base` with the fields the caller gave as keywords (None: not given); sequences become tuples."""
    changes = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in given.items() if v is not None}
    return replace(base, **changes)


def _module_variants(source: ModelSource, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], FoldReport]:
    """The PyTorch module as given, and the copy folded by `fold_module` (shapes proven on the feeds)."""
    import torch

    from foldnorm.fold.torch_fold import fold_module

    assert source.module is not None
    example = [torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()]
    result = fold_module(source.module, example_inputs=example)
    return {"unfolded": source.module.eval(), "folded": result.module}, result.report


def _bench_config(backend: Backend[OptionsT], cfg: OptionsT, targets: Mapping[str, Any],
                  feeds: dict[str, np.ndarray], reference: list[np.ndarray], batch_size: int, precision: str,
                  timing: TimingOptions, tell: Callable[[str, float | None], None], eta: Eta) -> list[BenchRow]:
    """Open both variants, measure their accuracy, time them interleaved, and return one row per variant."""
    name = " ".join(p for p in (backend.name, cfg.label(), precision, f"batch {batch_size}") if p)
    sessions: dict[str, Session] = {}
    build_s: dict[str, float] = {}
    with ExitStack() as opened:
        for variant in VARIANTS:
            tell(f"opening {name}: {variant}", None)
            start = time.perf_counter()
            sessions[variant] = opened.enter_context(backend.open(targets[variant], cfg))
            build_s[variant] = time.perf_counter() - start
        accuracy = {v: _accuracy(reference, s.run(feeds)) for v, s in sessions.items()}
        prepared = {v: s.prepare(feeds) for v, s in sessions.items()}
        timed = {v: Timed(partial(s.run_timed, prepared[v]), s.synchronize, s.device_timer())
                 for v, s in sessions.items()}
        tell(f"warm-up {name} ({timing.warmup} runs per variant)", None)

        def on_progress(fraction: float) -> None:
            if fraction == 0.0:
                eta.timing()
            tell(f"timing {name}", fraction)

        exact = timing.iterations  # --iterations is exact; otherwise at least 10 runs and min_time_s each
        stats, samples = time_interleaved(timed, warmup=timing.warmup,
                                          min_time_s=0.0 if exact else timing.min_time_s,
                                          max_iterations=exact, min_iterations=exact or 10, on_progress=on_progress)
        memory = {v: s.peak_memory_bytes() for v, s in sessions.items()}
    mem_mb = {v: None if m is None else m / 2**20 for v, m in memory.items()}
    rows = []
    for v in VARIANTS:
        speedup, iqr, p50_ratio = speedup_stats(samples["unfolded"], samples[v])
        max_abs, max_rel, nonfinite = accuracy[v]
        rows.append(BenchRow(backend.name, cfg.label(), precision, v, batch_size, stats[v],
                             stats[v].throughput(batch_size), speedup, iqr, p50_ratio, max_abs, max_rel, nonfinite,
                             build_s[v], mem_mb[v], [s * 1e3 for s in samples[v]]))
    return rows


def _accuracy(reference: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[float, float, int]:
    """(max abs, max rel, NaN/Inf count) of `outputs` against the reference, over all outputs."""
    worst = (0.0, 0.0, 0)
    for ref, got in zip(reference, outputs):
        max_abs, max_rel, _, _ = measure_error(ref, got)
        nonfinite = int(np.count_nonzero(~np.isfinite(np.asarray(got, dtype=np.float64))))
        worst = (max(worst[0], max_abs), max(worst[1], max_rel), worst[2] + nonfinite)
    return worst

