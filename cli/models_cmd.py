"""`foldnorm models`: the built-in reference models."""

from __future__ import annotations

import click

from .options import format_option
from .render import emit_json, table


@click.command(short_help="List the built-in PyTorch reference models.")
@format_option("text", "json")
def models(fmt: str) -> None:
    """List the built-in PyTorch reference models that `export` and `bench` accept by name."""
    from foldnorm.models import REGISTRY

    rows = [{"name": s.name, "input_shape": list(s.input_shape), "description": s.description}
            for s in REGISTRY.values()]
    if fmt == "json":
        emit_json(rows)
        return
    click.echo(table(["name", "input shape", "description"],
                     [[r["name"], "x".join(map(str, r["input_shape"])), r["description"]] for r in rows]))
