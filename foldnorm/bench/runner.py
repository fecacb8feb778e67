"""Benchmark folded against unfolded: latency and accuracy per backend, configuration and precision.

Inputs are generated once and reused by every row. Both variants of one configuration are timed by the
one interleaved loop in `foldnorm.bench.timing`. Every row's outputs are compared with the reference: the
unfolded model on ONNX Runtime, CPU, optimizations disabled, fp32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from foldnorm.bench.backends import get_backend
from foldnorm.bench.backends.base import (
    Availability,
    Backend,
    BenchInputs,
    OptionsT,
    OptLevel,
    Precision,
    RunOptions,
    Session,
)
from foldnorm.bench.environment import check_threads, environment, load_note
from foldnorm.bench.timing import LatencyStats, Timed, TimingOptions, time_interleaved
from foldnorm.errors import BackendUnavailableError
from foldnorm.export.exporter import Exporter
from foldnorm.export.sources import ModelSource, resolve_source
from foldnorm.fold.engine import fold_model
from foldnorm.fold.report import FoldReport
from foldnorm.onnxgraph.atomicfile import temporary_directory
from foldnorm.onnxgraph.inputs import Shape, input_specs, make_feeds
from foldnorm.onnxgraph.modelio import load_model, save_model
from foldnorm.verify.compare import VerifyResult, compare_models, measure_error
from foldnorm.verify.quantized import is_quantized

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

VARIANTS = ("unfolded", "folded")
NEEDS_MODULE = Availability(False, "needs a PyTorch model (a built-in name or package.module:attr), not an .onnx file")

Progress = Callable[[str, "float | None"], None]
DataclassT = TypeVar("DataclassT", bound="DataclassInstance")


@dataclass
class BenchRow:
    """One variant on one backend configuration."""

    backend: str
    config: str
    precision: str
    variant: str
    latency: LatencyStats
    throughput: float
    speedup: float
    speedup_iqr: tuple[float, float]
    max_abs: float
    max_rel: float
    nonfinite: int
    build_s: float
    peak_mem_mb: float | None
    samples_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """Plain JSON-ready data (raw samples only when asked)."""
        data = {k: v for k, v in self.__dict__.items() if k != "samples_ms"}
        data["latency"] = self.latency.to_dict()
        if samples:
            data["samples_ms"] = self.samples_ms
        return data


@dataclass
class Int8Pair:
    """The int8 (QDQ) models an int8 row times: how the unfolded one was made, its fold and verification."""

    origin: str
    fold_report: FoldReport
    verify: VerifyResult

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {"origin": self.origin, "fold_report": self.fold_report.to_dict(), "verify": self.verify.to_dict()}


@dataclass
class BenchResult:
    """Everything one `benchmark` run measured."""

    model: str
    batch_size: int
    rows: list[BenchRow]
    fold_report: FoldReport
    verify: VerifyResult
    unavailable: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    torch_fold_report: FoldReport | None = None
    #: the int8 models of `precision="int8"` rows when `benchmark` quantized a float model itself.
    int8: Int8Pair | None = None

    @property
    def batchnorm_folded(self) -> int:
        """BatchNorm nodes folded away."""
        return self.fold_report.batchnorm_folded

    def fold_report_for(self, row: BenchRow) -> FoldReport | None:
        """The fold report of the graph (or module) `row` ran."""
        if row.backend == "torch":
            return self.torch_fold_report
        return self.int8.fold_report if self.int8 is not None and row.precision == "int8" else self.fold_report

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "batchnorm_total": self.fold_report.batchnorm_total,
            "batchnorm_folded": self.batchnorm_folded,
            "protected_kept": self.fold_report.protected_kept,
            "rows": [r.to_dict(samples) for r in self.rows],
            "verify": self.verify.to_dict(),
            "fold_report": self.fold_report.to_dict(),
            "torch_fold_report": self.torch_fold_report.to_dict() if self.torch_fold_report else None,
            "int8": self.int8.to_dict() if self.int8 else None,
            "unavailable": self.unavailable,
            "notes": self.notes,
            "environment": self.environment,
        }


def benchmark(
    model: str,
    *,
    backends: Sequence[str] = ("ort-cpu",),
    options: RunOptions | None = None,
    timing: TimingOptions | None = None,
    batch_size: int = 1,
    input_shape: Shape | None = None,
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
    """Fold `model` (an .onnx path, built-in name or import spec) and time both variants on each backend.

    `backends` are registry names or "all". `options` (what to run: optimization levels, precisions,
    threads, TensorRT profile and cache) and `timing` (warm-up, minimum time, exact iterations) default to
    `RunOptions()` and `TimingOptions()`; the keywords after `progress` are conveniences that replace single
    fields of those objects (None: keep it). Backends that cannot run here are listed in `unavailable` with
    the reason and an install hint; asking only for unavailable backends raises `BackendUnavailableError`.
    `precisions` fp32/fp16 apply to GPU backends (CPU rows are fp32); "int8" adds rows for an int8 (QDQ)
    pair on every ONNX backend configuration that runs models as given: the model quantized by ONNX Runtime's
    static quantizer (`bench.int8`; errors then measured against the float model) and that model folded. A
    model that is already QDQ gives int8 rows only.
    """
    from foldnorm.bench.backends import BACKENDS

    options = _replaced(options or RunOptions(), ort_opt=ort_opt, precisions=precisions, threads=threads,
                        max_batch_size=max_batch_size, cache_dir=cache_dir, cuda_graph=cuda_graph)
    timing = _replaced(timing or TimingOptions(), warmup=warmup, min_time_s=min_time_s, iterations=iterations)
    check_threads(options.threads)
    names = list(BACKENDS) if "all" in backends else list(dict.fromkeys(backends))
    chosen = [get_backend(n) for n in names]
    say: Progress = progress or (lambda _msg, _frac: None)
    with temporary_directory() as tmp:
        work = Path(tmp)
        say(f"preparing {model}", None)
        source = resolve_source(model, work, input_shape=input_shape, opset=opset, exporter=exporter)
        unfolded = load_model(source.onnx_path)
        say("folding", None)
        folded = fold_model(unfolded)
        paths = {"unfolded": str(source.onnx_path), "folded": str(save_model(folded.model, work / "folded.onnx"))}
        shapes = _input_shapes(unfolded, source.input_shape or input_shape, batch_size)
        verify = compare_models(unfolded, folded.model, batch_sizes=sorted({1, 2, batch_size}), shapes=shapes)
        feeds = make_feeds(unfolded, batch_size, seed, shapes)
        from foldnorm.bench.backends.ort_cpu import OrtSession

        with OrtSession(paths["unfolded"]) as session:
            reference = session.run(feeds)
        float_options = replace(options, precisions=tuple(p for p in options.precisions if p != "int8"))
        pairs, int8 = _model_pairs(unfolded, paths, options.precisions, work, feeds, shapes, batch_size, seed, say)
        inputs = BenchInputs({k: tuple(v.shape) for k, v in feeds.items()},
                             {s.name: not isinstance(s.dims[0], int) or s.dims[0] <= 0
                              for s in input_specs(unfolded) if s.dims})
        targets: dict[str, dict[str, Any]] = {"onnx": paths}
        torch_report = None
        rows: list[BenchRow] = []
        unavailable: dict[str, str] = {}
        for backend in chosen:
            status = backend.availability()
            if status.ok and backend.source == "module" and source.module is None:
                status = NEEDS_MODULE
            if not status.ok:
                log.info("skipping %s: %s", backend.name, status.message())
                unavailable[backend.name] = status.message()
                continue
            if backend.source == "module" and "module" not in targets:
                say("folding the PyTorch module", None)
                targets["module"], torch_report = _module_variants(source, feeds)
            for cfg in backend.configs(float_options, inputs):
                runs = [(cfg, targets["module"])] if backend.source == "module" else \
                    [(replace(cfg, precision=p), pair) for p, pair in pairs.items() if cfg.precision == "fp32" or
                     p == "fp32"]
                for run_cfg, target in runs:
                    try:
                        rows.extend(_bench_config(backend, run_cfg, target, feeds, reference, batch_size, timing,
                                                  say))
                    except BackendUnavailableError as exc:
                        unavailable[f"{backend.name} {cfg.label()}"] = str(exc).removeprefix(f"{backend.name} ")
        if not rows and unavailable:
            raise BackendUnavailableError("; ".join(f"{k} {v}" for k, v in unavailable.items()))
        notes = [n for n in (load_note(), *_int8_notes(pairs, int8)) if n]
        return BenchResult(source.label, batch_size, rows, folded.report, verify, unavailable, environment(),
                           notes, torch_report, int8)


def _model_pairs(unfolded: Any, paths: dict[str, str], precisions: Sequence[Precision], work: Path,
                 feeds: dict[str, np.ndarray], shapes: dict[str, Shape] | None, batch_size: int, seed: int,
                 say: Progress) -> tuple[dict[Precision, dict[str, str]], Int8Pair | None]:
    """The unfolded/folded files to time per model precision: a QDQ model is int8 as it is; a float model is
    fp32 (unless only int8 was asked for) and, for "int8", quantized by ONNX Runtime and folded again."""
    if is_quantized(unfolded):
        return {"int8": paths}, None
    pairs: dict[Precision, dict[str, str]] = {}
    if "int8" not in precisions or any(p != "int8" for p in precisions):
        pairs["fp32"] = paths
    if "int8" not in precisions:
        return pairs, None
    from foldnorm.bench.int8 import CALIBRATION_BATCHES, quantize_qdq

    say("quantizing (ONNX Runtime, QDQ int8)", None)
    calibration = [make_feeds(unfolded, batch_size, seed + 1 + k, shapes) for k in range(CALIBRATION_BATCHES)]
    int8_path = quantize_qdq(paths["unfolded"], work / "int8.onnx", calibration)
    say("folding the int8 model", None)
    folded = fold_model(int8_path)
    pairs["int8"] = {"unfolded": str(int8_path), "folded": str(save_model(folded.model, work / "int8-folded.onnx"))}
    verify = compare_models(int8_path, folded.model, batch_sizes=sorted({1, 2, batch_size}), shapes=shapes)
    origin = (f"ONNX Runtime quantize_static (QDQ, int8 weights per channel, uint8 activations, MinMax on "
              f"{CALIBRATION_BATCHES} seeded random batches)")
    return pairs, Int8Pair(origin, folded.report, verify)


def _int8_notes(pairs: Mapping[Precision, Any], int8: Int8Pair | None) -> list[str]:
    """What the int8 rows ran and what their errors are measured against."""
    if int8 is not None:
        return [f"int8 rows: {int8.origin}; errors vs the fp32 unfolded model",
                f"int8 fold: {int8.fold_report.summary()}", f"int8 verify: {int8.verify.summary()}"]
    if "int8" in pairs:
        return ["int8 rows: a QDQ model; errors vs the unfolded QDQ model on ort-cpu opt=disabled"]
    return []


def _replaced(base: DataclassT, **given: Any) -> DataclassT:
    """`base` with the fields the caller gave as keywords (None: not given); sequences become tuples."""
    changes = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in given.items() if v is not None}
    return replace(base, **changes)


def _input_shapes(model: Any, shape: Shape | None, batch_size: int) -> dict[str, Shape] | None:
    """The one input's shape (a PyTorch model's example shape, or the user's for an .onnx file with dynamic
    dims), with the batch axis set to `batch_size`."""
    specs = input_specs(model)
    if shape is None or len(specs) != 1:
        return None
    return {specs[0].name: (batch_size, *shape[1:])}


def _module_variants(source: ModelSource, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], FoldReport]:
    """The PyTorch module as given, and the copy folded by `fold_module` (shapes proven on the feeds)."""
    import torch

    from foldnorm.fold.torch_fold import fold_module

    assert source.module is not None
    example = [torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()]
    result = fold_module(source.module, example_inputs=example)
    return {"unfolded": source.module.eval(), "folded": result.module}, result.report


def _bench_config(backend: Backend[OptionsT], cfg: OptionsT, targets: Mapping[str, Any],
                  feeds: dict[str, np.ndarray], reference: list[np.ndarray], batch_size: int, timing: TimingOptions,
                  say: Progress) -> list[BenchRow]:
    """Open both variants, measure their accuracy, time them interleaved, and return one row per variant."""
    label = cfg.label()
    sessions: dict[str, Session] = {}
    build_s: dict[str, float] = {}
    with ExitStack() as opened:
        for variant in VARIANTS:
            say(f"opening {backend.name} {label} {variant}", None)
            start = time.perf_counter()
            sessions[variant] = opened.enter_context(backend.open(targets[variant], cfg))
            build_s[variant] = time.perf_counter() - start
        accuracy = {v: _accuracy(reference, s.run(feeds)) for v, s in sessions.items()}
        prepared = {v: s.prepare(feeds) for v, s in sessions.items()}
        timed = {v: Timed(partial(s.run_timed, prepared[v]), s.synchronize, s.device_timer())
                 for v, s in sessions.items()}
        title = f"timing {backend.name} {label}"
        exact = timing.iterations  # --iterations is exact; otherwise at least 10 runs and min_time_s each
        stats, samples = time_interleaved(timed, warmup=timing.warmup,
                                          min_time_s=0.0 if exact else timing.min_time_s,
                                          max_iterations=exact, min_iterations=exact or 10,
                                          on_progress=lambda frac: say(title, frac))
        memory = {v: s.peak_memory_bytes() for v, s in sessions.items()}
    precision = cfg.precision
    mem_mb = {v: None if m is None else m / 2**20 for v, m in memory.items()}
    rows = []
    for v in VARIANTS:
        speedup, iqr = paired_speedup(samples["unfolded"], samples[v])
        max_abs, max_rel, nonfinite = accuracy[v]
        rows.append(BenchRow(backend.name, label, precision, v, stats[v], stats[v].throughput(batch_size), speedup,
                             iqr, max_abs, max_rel, nonfinite, build_s[v], mem_mb[v], [s * 1e3 for s in samples[v]]))
    return rows


def paired_speedup(base: Sequence[float], other: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Median and interquartile range of the per-round ratios base/other.

    Both samples of a round ran back to back, so load that comes and goes hits both; the ratio of each
    pair cancels it where the ratio of two medians would not.
    """
    ratios = np.asarray(base, dtype=np.float64) / np.maximum(np.asarray(other, dtype=np.float64), 1e-12)
    lo, mid, hi = np.percentile(ratios, [25, 50, 75])
    return float(mid), (float(lo), float(hi))


def _accuracy(reference: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[float, float, int]:
    """(max abs, max rel, NaN/Inf count) of `outputs` against the reference, over all outputs."""
    worst = (0.0, 0.0, 0)
    for ref, got in zip(reference, outputs):
        max_abs, max_rel, _, _ = measure_error(ref, got)
        nonfinite = int(np.count_nonzero(~np.isfinite(np.asarray(got, dtype=np.float64))))
        worst = (max(worst[0], max_abs), max(worst[1], max_rel), worst[2] + nonfinite)
    return worst

