"""`foldnorm bench` output: text table, CSV, Markdown, JSON, the files `--output DIR` saves, and progress."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click

from foldnorm.bench.runner import BenchResult, BenchRow

from .common import info, table, write_text

#: `--format` of `foldnorm bench`.
BenchFormat = Literal["text", "json", "csv", "markdown"]

HEADERS = ["backend", "config", "precision", "variant", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms",
           "samples/s", "speed-up", "IQR", "max abs err", "max rel err", "NaN/Inf", "build s", "peak MB", "runs"]


def _cells(row: BenchRow) -> list[Any]:
    lat = row.latency
    iqr = f"{row.speedup_iqr[0]:.2f}-{row.speedup_iqr[1]:.2f}"
    return [row.backend, row.config, row.precision, row.variant, lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.mean_ms,
            lat.std_ms, row.throughput, row.speedup, iqr, row.max_abs, row.max_rel, row.nonfinite, row.build_s,
            row.peak_mem_mb, lat.iterations]


def _footer(result: BenchResult) -> list[str]:
    lines = [f"fold: {result.fold_report.summary()}", f"verify: {result.verify.summary()}"]
    if result.torch_fold_report is not None:
        lines.append(f"fold_module (torch rows): {result.torch_fold_report.summary()}")
    lines += [f"{name}: {why}" for name, why in result.unavailable.items()]
    lines += [f"note: {n}" for n in result.notes]
    env = result.environment
    lines.append("environment: " + ", ".join(f"{k} {env[k]}" for k in ("cpu", "gpu", "onnxruntime", "torch",
                                                                         "tensorrt") if env.get(k)))
    return lines


TEXT_HEADERS = ["backend", "config", "precision", "variant", "p50 ms", "p90 ms", "speed-up", "IQR",
                "max abs err", "max rel err", "NaN/Inf", "BN folded", "GN/LN/IN kept"]


def _folded_counts(result: BenchResult, row: BenchRow) -> tuple[int, int]:
    """BatchNorm folded and GN/LN/IN kept in the graph (or module) the row ran."""
    report = result.fold_report_for(row)
    if report is None:
        return 0, 0
    return (report.batchnorm_folded if row.variant == "folded" else 0), result.fold_report.protected_kept


def bench_text(result: BenchResult) -> str:
    """The main columns as an aligned text table, then the fold, verification, unavailable and environment
    lines. Every statistic (p99, mean, std, throughput, build time, memory) is in the JSON, CSV and Markdown."""
    head = (f"model: {result.model} (batch {result.batch_size}); errors vs unfolded on ort-cpu opt=disabled fp32; "
            "speed-up: median of per-round unfolded/row ratios (IQR 25-75%)")
    rows = []
    for r in result.rows:
        iqr = f"{r.speedup_iqr[0]:.2f}-{r.speedup_iqr[1]:.2f}"
        rows.append([r.backend, r.config, r.precision, r.variant, r.latency.p50_ms, r.latency.p90_ms, r.speedup,
                     iqr, r.max_abs, r.max_rel, r.nonfinite, *_folded_counts(result, r)])
    return "\n".join([head, table(TEXT_HEADERS, rows), *_footer(result)])


def bench_markdown(result: BenchResult) -> str:
    """The rows as a GitHub Markdown table plus the same summary lines as a list."""
    text = table(HEADERS, [_cells(r) for r in result.rows]).splitlines()
    cells = [[c for c in _split(line, text[1])] for line in (text[0], *text[2:])]
    lines = [f"**{result.model}**, batch {result.batch_size}", "",
             "| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells[1:]]
    lines += ["", *(f"- {line}" for line in _footer(result))]
    return "\n".join(lines)


def _split(line: str, rule: str) -> list[str]:
    """Cut one line of the aligned text table into its cells using the dashes of the rule line."""
    out, pos = [], 0
    for dashes in rule.split("  "):
        out.append(line[pos:pos + len(dashes)].strip())
        pos += len(dashes) + 2
    return out


def bench_csv(result: BenchResult) -> str:
    """One CSV line per row, latency statistics flattened."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    fields = ["model", "batch_size", "backend", "config", "precision", "variant", "iterations", "p50_ms", "p90_ms",
              "p99_ms", "mean_ms", "std_ms", "min_ms", "throughput", "speedup", "speedup_p25", "speedup_p75",
              "max_abs", "max_rel", "nonfinite", "build_s", "peak_mem_mb"]
    writer.writerow(fields)
    for row in result.rows:
        flat = {"model": result.model, "batch_size": result.batch_size, **row.to_dict(), **row.latency.to_dict(),
                "speedup_p25": row.speedup_iqr[0], "speedup_p75": row.speedup_iqr[1]}
        writer.writerow(["" if flat[f] is None else flat[f] for f in fields])
    return buf.getvalue()


def bench_json(result: BenchResult, samples: bool = False) -> str:
    """The result as indented JSON (raw samples in milliseconds when asked)."""
    return json.dumps(result.to_dict(samples), indent=2, default=str)


RENDERERS: dict[BenchFormat, Callable[[BenchResult], str]] = {
    "text": bench_text, "json": bench_json, "csv": bench_csv, "markdown": bench_markdown}


def write_outputs(result: BenchResult, directory: Path, plot: bool) -> list[Path]:
    """Save bench.txt/.json (with samples)/.csv/.md, and bench.png with `plot`; every file atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [write_text(directory / "bench.txt", bench_text(result)),
               write_text(directory / "bench.json", bench_json(result, samples=True)),
               write_text(directory / "bench.csv", bench_csv(result)),
               write_text(directory / "bench.md", bench_markdown(result))]
    if plot:
        from foldnorm.bench.plot import plot_latency

        written.append(plot_latency(result, directory / "bench.png"))
    return written


class Progress:
    """Progress on stderr: a redrawn bar when stderr is a terminal, one line per step otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.current: str | None = None

    def __call__(self, message: str, fraction: float | None) -> None:
        """Show `message` (with a bar for timing loops)."""
        if fraction is None or message != self.current:
            if self.tty and self.current is not None:
                click.echo("", err=True)
            self.current = message
            if fraction is None or not self.tty:
                info(message)
                return
        if self.tty and fraction is not None:
            filled = int(fraction * 20)
            click.echo(f"\r{message} [{'#' * filled}{' ' * (20 - filled)}] {fraction:4.0%}", err=True, nl=False)
            if fraction >= 1.0:
                click.echo("", err=True)
                self.current = None
