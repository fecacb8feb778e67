"""What a benchmark measured: one row per variant, configuration and batch size, the verdict per
configuration, and what the rows ran on (model sizes, precision, fold and verification reports, environment)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from foldnorm.bench.speedup import Verdict, ratios_disagree, verdict_line
from foldnorm.bench.timing import LatencyStats
from foldnorm.bench.workload import ModelStats
from foldnorm.fold.report import FoldReport
from foldnorm.verify.compare import VerifyResult


@dataclass
class BenchRow:
    """One variant on one backend configuration at one batch size.

    `speedup` is the median per-round ratio unfolded/this row with its IQR; `p50_ratio` is unfolded p50 / this
    row's p50 (see `foldnorm.bench.speedup`).
    """

    backend: str
    config: str
    precision: str
    variant: str
    batch_size: int
    latency: LatencyStats
    throughput: float
    speedup: float
    speedup_iqr: tuple[float, float]
    p50_ratio: float
    max_abs: float
    max_rel: float
    nonfinite: int
    build_s: float
    peak_mem_mb: float | None
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def ratios_disagree(self) -> bool:
        """The p50 ratio and the per-round speed-up differ by more than 10%: the machine was unstable."""
        return ratios_disagree(self.p50_ratio, self.speedup)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """Plain JSON-ready data (raw samples only when asked)."""
        data = {k: v for k, v in self.__dict__.items() if k != "samples_ms"}
        data["latency"] = self.latency.to_dict()
        data["ratios_disagree"] = self.ratios_disagree
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
    """Everything one `benchmark` run measured.

    `batch_sizes` are those really run (a static-batch model's own batch); `precision` is the model's own
    (fp32, fp16, ...); `models` holds the size and node count of the unfolded and folded ONNX models.
    """

    model: str
    batch_sizes: list[int]
    precision: str
    rows: list[BenchRow]
    fold_report: FoldReport
    verify: VerifyResult
    models: dict[str, ModelStats] = field(default_factory=dict)
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

    @property
    def verdicts(self) -> list[Verdict]:
        """One verdict per folded row, named by backend and config (and precision and batch where they vary)."""
        folded = [r for r in self.rows if r.variant == "folded"]
        precisions = len({r.precision for r in folded}) > 1
        batches = len({r.batch_size for r in folded}) > 1
        out = []
        for r in folded:
            where = " ".join(p for p in (r.backend, r.config, r.precision if precisions else "",
                                          f"batch {r.batch_size}" if batches else "") if p)
            out.append(Verdict(r.backend, r.config, r.precision, r.batch_size, where, r.speedup, r.speedup_iqr))
        return out

    def verdict(self) -> str:
        """The one-line verdict: `folding: 1.09x faster on torch device=cpu (IQR 1.07-1.12, significant); ...`."""
        return verdict_line(self.verdicts)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "model": self.model,
            "batch_sizes": self.batch_sizes,
            "precision": self.precision,
            "models": {k: v.to_dict() for k, v in self.models.items()},
            "batchnorm_total": self.fold_report.batchnorm_total,
            "batchnorm_folded": self.batchnorm_folded,
            "protected_kept": self.fold_report.protected_kept,
            "rows": [r.to_dict(samples) for r in self.rows],
            "verdict": self.verdict(),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "verify": self.verify.to_dict(),
            "fold_report": self.fold_report.to_dict(),
            "torch_fold_report": self.torch_fold_report.to_dict() if self.torch_fold_report else None,
            "int8": self.int8.to_dict() if self.int8 else None,
            "unavailable": self.unavailable,
            "notes": self.notes,
            "environment": self.environment,
        }
