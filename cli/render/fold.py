"""`foldnorm fold` and `foldnorm inspect` output: the report table, a folded file, a folded directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from foldnorm.fold.report import FoldRecord, FoldReport
from foldnorm.onnxgraph.stats import ModelStats
from foldnorm.workflows import FoldFileResult

from .common import Format, emit_json, info, table, write_json

if TYPE_CHECKING:  # (the process pool of a directory fold loads only when a directory is folded)
    from foldnorm.directory import DirectoryItem, DirectoryResult


def report_table(report: FoldReport) -> str:
    """The fold report as a text table (with the errors measured at each fold, when verification ran), the
    before/after summary and the one-line summary."""
    measured = any(r.max_rel_err is not None for r in report.records)
    headers = ["op", "node", "module", "outcome", "target"] + (["max abs err", "max rel err"] if measured else [])
    rows = [[r.op_type, r.node, r.module, r.outcome, r.target]
            + ([r.max_abs_err, r.max_rel_err] if measured else []) + [r.reason] for r in report.records]
    body = table([*headers, "reason"], rows) if rows else "no normalization nodes found"
    parts = [body]
    if report.before is not None and report.after is not None:
        parts.append(stats_table(report.before, report.after))
    return "\n".join([*parts, report.summary(), *(f"note: {note}" for note in report.notes)])


def stats_table(before: ModelStats, after: ModelStats) -> str:
    """Before/after: all nodes, each op type whose count changed, parameters and size."""
    changed = [op for op in sorted(set(before.nodes) | set(after.nodes))
               if before.nodes.get(op, 0) != after.nodes.get(op, 0)]
    rows: list[list[object]] = [["nodes", before.node_count, after.node_count]]
    rows += [[f"  {op}", before.nodes.get(op, 0), after.nodes.get(op, 0)] for op in changed]
    estimated = after.file_bytes is None
    rows += [["parameters", f"{before.parameters:,}", f"{after.parameters:,}"],
             ["file size" + (" (after: estimated)" if estimated else ""), _size(before.file_bytes),
              _size(after.estimate_file_bytes(before))]]
    return table(["", "before", "after"], rows)


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def worst_table(records: list[FoldRecord]) -> str:
    """The folds with the largest measured error, largest first."""
    return table(["op", "node", "module", "measured at", "max abs err", "max rel err"],
                 [[r.op_type, r.node, r.module, r.error_at, r.max_abs_err, r.max_rel_err] for r in records])


def render_inspect(input_path: Path, report: FoldReport, fmt: Format) -> None:
    """What `inspect` prints: the report (JSON: with the input's path)."""
    if fmt == "json":
        emit_json({"input": str(input_path), "report": report.to_dict()})
        return
    click.echo(report_table(report))


def render_fold_file(result: FoldFileResult, fmt: Format, report_path: Path | None, worst: int | None = None
                     ) -> None:
    """What `fold IN -o OUT` prints (the report, the worst folds, the verification and where the models first
    diverge, where it went) and the `--report` file."""
    if report_path is not None:
        write_json(report_path, result.report.to_dict())
    if fmt == "json":
        emit_json(result.to_dict())
        return
    click.echo(report_table(result.report))
    if worst:
        click.echo(f"largest errors at a fold:\n{worst_table(result.report.worst(worst))}")
    if result.verify is not None:
        if result.verify.noise is not None:
            click.echo(f"noise floor: {result.verify.noise.sentence()}")
        if result.verify.localization is not None:
            click.echo("\n".join(result.verify.localization.lines()))
        click.echo(f"verify: {result.verify.summary()}")
    if result.output:
        click.echo(f"wrote {result.output}")


def directory_progress(item: DirectoryItem) -> None:
    """One line on stderr per model of a directory, as it finishes."""
    info(f"{'ok    ' if item.ok else 'FAILED'} {item.input}: {item.message}")


def render_fold_directory(result: DirectoryResult, fmt: Format, report_path: Path | None) -> None:
    """What `fold DIR -o OUTDIR` prints (the summary line) and the `--report` file (one entry per model)."""
    if report_path is not None:
        write_json(report_path, result.to_dict())
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        click.echo(result.summary())
