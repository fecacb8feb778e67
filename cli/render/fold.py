"""`foldnorm fold` and `foldnorm inspect` output: the report table, a folded file, a folded directory."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.directory import DirectoryItem, DirectoryResult
from foldnorm.fold.report import FoldReport
from foldnorm.workflows import FoldFileResult

from .common import Format, emit_json, info, table, write_json


def report_table(report: FoldReport) -> str:
    """The fold report as a text table plus its one-line summary."""
    rows = [(r.op_type, r.node, r.module, r.outcome, r.target, r.reason) for r in report.records]
    body = table(["op", "node", "module", "outcome", "target", "reason"], rows) if rows else \
        "no normalization nodes found"
    return "\n".join([body, report.summary(), *(f"note: {note}" for note in report.notes)])


def render_inspect(input_path: Path, report: FoldReport, fmt: Format) -> None:
    """What `inspect` prints: the report (JSON: with the input's path)."""
    if fmt == "json":
        emit_json({"input": str(input_path), "report": report.to_dict()})
        return
    click.echo(report_table(report))


def render_fold_file(result: FoldFileResult, fmt: Format, report_path: Path | None) -> None:
    """What `fold IN -o OUT` prints (the report, the verification, where it went) and the `--report` file."""
    if report_path is not None:
        write_json(report_path, result.report.to_dict())
    if fmt == "json":
        emit_json(result.to_dict())
        return
    click.echo(report_table(result.report))
    if result.verify is not None:
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
