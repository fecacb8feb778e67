"""`foldnorm models` output: the built-in reference models as a table or JSON."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import click

from .common import Format, emit_json, table

if TYPE_CHECKING:
    from foldnorm.models import ModelSpec


def render_models(specs: Iterable[ModelSpec], fmt: Format) -> None:
    """Name, input shapes (one per input) and description of each model."""
    rows = [{"name": s.name, "input_shapes": [list(shape) for shape in s.input_shapes], "description": s.description}
            for s in specs]
    if fmt == "json":
        emit_json(rows)
        return
    click.echo(table(["name", "input shapes", "description"],
                     [[r["name"], " ".join("x".join(map(str, shape)) for shape in r["input_shapes"]), r["description"]]
                      for r in rows]))
