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

from foldnorm.bench.progress import Step, eta_text
from foldnorm.bench.result import BenchResult, BenchRow
from foldnorm.bench.speedup import ratio_number

from .common import info, table, write_text

#: `--format` of `foldnorm bench`.
BenchFormat = Literal["text", "json", "csv", "markdown"]

HEADERS = ["backend", "config", "precision", "batch", "variant", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms",
           "samples/s", "speed-up", "IQR", "p50 ratio", "max abs err", "max rel err", "NaN/Inf", "build s", "peak MB",
           "runs"]
TEXT_HEADERS = ["backend", "config", "precision", "batch", "variant", "p50 ms", "p90 ms", "speed-up", "IQR",
                "p50 ratio", "max abs err", "max rel err", "NaN/Inf", "BN folded", "GN/LN/IN kept"]

#: Marks a row whose p50 ratio and per-round speed-up disagree by more than 10%.
FLAG = "(!)"


def _iqr(row: BenchRow) -> str:
    return f"{ratio_number(row.speedup_iqr[0])}-{ratio_number(row.speedup_iqr[1])}"


def _p50_ratio(row: BenchRow) -> str:
    return f"{row.p50_ratio:.3f}" + (f" {FLAG}" if row.ratios_disagree else "")


def _cells(row: BenchRow) -> list[Any]:
    lat = row.latency
    return [row.backend, row.config, row.precision, row.batch_size, row.variant, lat.p50_ms, lat.p90_ms, lat.p99_ms,
            lat.mean_ms, lat.std_ms, row.throughput, row.speedup, _iqr(row), _p50_ratio(row), row.max_abs,
            row.max_rel, row.nonfinite, row.build_s, row.peak_mem_mb, lat.iterations]


def _batches(result: BenchResult) -> str:
    sizes = result.batch_sizes
    return f"batch {sizes[0]}" if len(sizes) == 1 else f"batch sizes {', '.join(map(str, sizes))}"


def _header(result: BenchResult) -> list[str]:
    """What was run, and how to read the errors and the speed-up."""
    sizes = "; ".join(f"{name} {stats.text()}" for name, stats in result.models.items())
    return [f"model: {result.model} ({result.precision}, {_batches(result)}); {sizes}",
            f"errors: against the unfolded model on ort-cpu opt=disabled {result.precision}",
            "speed-up: median over rounds of unfolded time / row time (each round runs both back to back, so "
            "load that comes and goes cancels); IQR: 25-75% of those ratios; p50 ratio: unfolded p50 / row p50"]


def _footer(result: BenchResult) -> list[str]:
    lines = [f"fold: {result.fold_report.summary()}", f"verify: {result.verify.summary()}"]
    if result.torch_fold_report is not None:
        lines.append(f"fold_module (torch rows): {result.torch_fold_report.summary()}")
    flagged = sum(r.ratios_disagree for r in result.rows)
    if flagged:
        lines.append(f"note: {FLAG} on {flagged} row(s): the p50 ratio and the per-round speed-up differ by more than "
                     "10%, so the machine's speed changed during the run; the per-round speed-up cancels such "
                     "changes, the p50s do not")
    lines += [f"{name}: {why}" for name, why in result.unavailable.items()]
    lines += [f"note: {n}" for n in result.notes]
    env = result.environment
    lines.append("environment: " + ", ".join(f"{k} {env[k]}" for k in ("cpu", "gpu", "onnxruntime", "openvino",
                                                                         "torch", "tensorrt") if env.get(k)))
    lines.append(result.verdict())
    return lines


def _folded_counts(result: BenchResult, row: BenchRow) -> tuple[int, int]:
    """BatchNorm folded and GN/LN/IN kept in the graph (or module) the row ran."""
    report = result.fold_report_for(row)
    if report is None:
        return 0, 0
    return (report.batchnorm_folded if row.variant == "folded" else 0), result.fold_report.protected_kept


def bench_text(result: BenchResult) -> str:
    """How to read it, the main columns as an aligned text table, then the fold, verification, unavailable,
    note and environment lines and the verdict. Every statistic (p99, mean, std, throughput, build time,
    memory) is in the JSON, CSV and Markdown."""
    rows = [[r.backend, r.config, r.precision, r.batch_size, r.variant, r.latency.p50_ms, r.latency.p90_ms,
             r.speedup, _iqr(r), _p50_ratio(r), r.max_abs, r.max_rel, r.nonfinite, *_folded_counts(result, r)]
            for r in result.rows]
    return "\n".join([*_header(result), table(TEXT_HEADERS, rows), *_footer(result)])


def bench_markdown(result: BenchResult) -> str:
    """The rows as a GitHub Markdown table, with the header and summary lines as lists."""
    text = table(HEADERS, [_cells(r) for r in result.rows]).splitlines()
    cells = [[c for c in _split(line, text[1])] for line in (text[0], *text[2:])]
    lines = [*(f"- {line}" for line in _header(result)), "",
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
              "p50_ratio", "ratios_disagree", "max_abs", "max_rel", "nonfinite", "build_s", "peak_mem_mb"]
    writer.writerow(fields)
    for row in result.rows:
        flat = {"model": result.model, **row.to_dict(), **row.latency.to_dict(),
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
        from foldnorm.bench.plot import plot_bench

        written.append(plot_bench(result, directory / "bench.png"))
    return written


class Progress:
    """Progress on stderr: a redrawn bar with the time left when stderr is a terminal; otherwise one line per
    step (with the time left where known)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.current: str | None = None

    def __call__(self, step: Step) -> None:
        """Show `step` (with a bar for timing loops)."""
        left = f" [{eta_text(step.eta_s)}]" if step.eta_s is not None else ""
        if step.fraction is None or step.message != self.current:
            if self.tty and self.current is not None:
                click.echo("", err=True)
            self.current = step.message
            if step.fraction is None or not self.tty:
                info(step.message + left)
                return
        if self.tty and step.fraction is not None:
            filled = int(step.fraction * 20)
            click.echo(f"\r{step.message} [{'#' * filled}{' ' * (20 - filled)}] {step.fraction:4.0%}{left}   ",
                       err=True, nl=False)
            if step.fraction >= 1.0:
                click.echo("", err=True)
                self.current = None
