"""What every renderer uses: plain text tables, JSON on stdout, atomic text/JSON files, progress lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import click

#: `--format` of the commands that print a text table or JSON.
Format = Literal["text", "json"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left/right aligned plain-text table (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.3f}"
    return str(value)


def emit_json(data: Any) -> None:
    """Print `data` as JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file beside it, then a rename), ending in a newline."""
    from foldnorm.onnxgraph.atomicfile import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text if text.endswith("\n") else text + "\n")
    return path


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON to `path` atomically (a temporary file beside it, then a rename)."""
    write_text(path, json.dumps(data, indent=2, default=str))


def info(message: str) -> None:
    """A progress or log line on stderr (stdout stays clean for the result)."""
    click.echo(message, err=True)
