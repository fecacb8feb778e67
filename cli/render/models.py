"""`foldnorm models` output: the built-in reference models as a table or JSON."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import click

from .common import Format, emit_json, table

if TYPE_CHECKING:
    from foldnorm.models import ModelSpec


def render_models(specs: Iterable[ModelSpec], fmt: Format) -> None:
    """Name, input shape and description of each model."""
    rows = [{"name": s.name, "input_shape": list(s.input_shape), "description": s.description} for s in specs]
    if fmt == "json":
        emit_json(rows)
        return
    click.echo(table(["name", "input shape", "description"],
                     [[r["name"], "x".join(map(str, r["input_shape"])), r["description"]] for r in rows]))
