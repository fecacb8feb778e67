"""`foldnorm export` output: notes on stderr, the per-batch check table and the summary line (or the JSON)."""

from __future__ import annotations

import click

from foldnorm.export.exporter import ExportResult

from .common import Format, emit_json, info, table


def render_export(result: ExportResult, fmt: Format) -> None:
    """What `export` prints: JSON, or the notes (stderr), the check against torch per batch and the summary."""
    if fmt == "json":
        emit_json(result.to_dict())
        return
    if result.requested_opset is not None and result.requested_opset != result.opset:
        info(f"note: torch wrote opset {result.opset}, not the requested {result.requested_opset}")
    for note in result.notes:
        info(f"note: {note}")
    if result.train_mode:
        info("note: the module was in train mode; BatchNorm was exported with its running statistics")
    if result.checks:
        click.echo(table(["batch", "max abs", "max rel", "ok"],
                         [[c.batch_size, c.max_abs, c.max_rel, "yes" if c.ok else "NO"] for c in result.checks]))
    click.echo(result.summary())
