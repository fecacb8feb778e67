"""Benchmark folded against unfolded: latency and accuracy per backend, in one result."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from foldnorm.backends import get_backend
from foldnorm.compare import VerifyResult, compare_models, measure_error, tolerances_for
from foldnorm.environment import environment
from foldnorm.errors import BackendUnavailableError
from foldnorm.export import Exporter
from foldnorm.folding import fold_model
from foldnorm.inputs import Shape, make_feeds
from foldnorm.modelio import load_model, save_model
from foldnorm.report import FoldReport
from foldnorm.sources import resolve_source
from foldnorm.timing import LatencyStats, Timed, time_interleaved

log = logging.getLogger(__name__)

VARIANTS = ("unfolded", "folded")


@dataclass
class BenchRow:
    """One variant on one backend configuration."""

    backend: str
    config: str
    variant: str
    latency: LatencyStats
    speedup: float
    max_abs: float
    max_rel: float
    nonfinite: int
    load_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        data = dict(self.__dict__)
        data["latency"] = self.latency.to_dict()
        return data


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

    @property
    def batchnorm_folded(self) -> int:
        """BatchNorm nodes folded away."""
        return sum(1 for r in self.fold_report.by_kind("batchnorm") if r.outcome == "folded")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "model": self.model,
            "batch_size": self.batch_size,
            "batchnorm_total": self.fold_report.batchnorm_total,
            "batchnorm_folded": self.batchnorm_folded,
            "protected_kept": self.fold_report.protected_kept,
            "rows": [r.to_dict() for r in self.rows],
            "verify": self.verify.to_dict(),
            "fold_report": self.fold_report.to_dict(),
            "unavailable": self.unavailable,
            "environment": self.environment,
        }


def benchmark(
    model: str,
    *,
    backends: Sequence[str] = ("ort-cpu",),
    ort_opt: Sequence[str] = ("disabled", "all"),
    threads: int = 0,
    batch_size: int = 1,
    input_shape: Shape | None = None,
    warmup: int = 5,
    min_time_s: float = 1.0,
    iterations: int | None = None,
    seed: int = 0,
    exporter: Exporter = "dynamo",
    opset: int = 18,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Fold `model` (an .onnx path, built-in name or import spec) and time both variants on each backend.

    Accuracy of every row is measured against the unfolded model on ONNX Runtime (CPU, optimizations
    disabled). Backends that cannot run here are listed in `unavailable` with the reason; asking only
    for unavailable backends raises `BackendUnavailableError`.
    """
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="foldnorm-bench-") as tmp:
        work = Path(tmp)
        say(f"preparing {model}")
        source = resolve_source(model, work, input_shape=input_shape, opset=opset, exporter=exporter)
        unfolded = load_model(source.onnx_path)
        say("folding")
        folded = fold_model(unfolded)
        paths = {"unfolded": str(source.onnx_path), "folded": str(save_model(folded.model, work / "folded.onnx"))}
        verify = compare_models(unfolded, folded.model, batch_sizes=sorted({1, 2, batch_size}))
        feeds = make_feeds(unfolded, batch_size, seed)
        from foldnorm.backends.ort_cpu import OrtSession

        reference = OrtSession(paths["unfolded"]).run(feeds)
        rows: list[BenchRow] = []
        unavailable: dict[str, str] = {}
        for name in backends:
            backend = get_backend(name)
            status = backend.availability()
            if not status.ok:
                unavailable[name] = status.message()
                continue
            configs = [{"opt": o, "threads": threads} for o in ort_opt] if name.startswith("ort") else [{}]
            for cfg in configs:
                label = ",".join(f"{k}={v}" for k, v in cfg.items() if v or k == "opt")
                say(f"timing {name} {label}")
                rows.extend(_bench_backend(backend, cfg, label, paths, feeds, reference, batch_size,
                                           warmup=warmup, min_time_s=min_time_s, iterations=iterations))
        if not rows and unavailable:
            raise BackendUnavailableError("; ".join(f"{k} {v}" for k, v in unavailable.items()))
        return BenchResult(source.label, batch_size, rows, folded.report, verify, unavailable, environment())


def _bench_backend(backend: Any, cfg: dict[str, Any], label: str, paths: dict[str, str],
                   feeds: dict[str, np.ndarray], reference: list[np.ndarray], batch_size: int, *,
                   warmup: int, min_time_s: float, iterations: int | None) -> list[BenchRow]:
    import time

    sessions, load_s = {}, {}
    for variant in VARIANTS:
        start = time.perf_counter()
        sessions[variant] = backend.open(paths[variant], **cfg)
        load_s[variant] = time.perf_counter() - start
    try:
        accuracy = {}
        for variant, sess in sessions.items():
            worst = (0.0, 0.0, 0)
            for ref, got in zip(reference, sess.run(feeds)):
                rtol, atol = tolerances_for(ref.dtype, None, None)
                max_abs, max_rel, _, nonfinite = measure_error(ref, got, rtol, atol)
                worst = (max(worst[0], max_abs), max(worst[1], max_rel), worst[2] + nonfinite)
            accuracy[variant] = worst
        prepared = {v: s.prepare(feeds) for v, s in sessions.items()}
        timed = {v: Timed(partial(s.run_timed, prepared[v]), s.synchronize) for v, s in sessions.items()}
        stats, _ = time_interleaved(timed, warmup=warmup, min_time_s=min_time_s,
                                    max_iterations=iterations, min_iterations=min(10, iterations or 10))
    finally:
        for sess in sessions.values():
            sess.close()
    base = stats["unfolded"].p50_ms
    return [
        BenchRow(backend.name, label, v, stats[v], base / stats[v].p50_ms if stats[v].p50_ms else 0.0,
                 *accuracy[v], load_s[v])
        for v in VARIANTS
    ]
