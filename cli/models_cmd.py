"""`foldnorm models`: the built-in reference models."""

from __future__ import annotations

import click

from .options import format_option
from .render.common import Format
from .render.models import render_models


@click.command()
@format_option(Format)
def models(fmt: Format) -> None:
    """List the built-in PyTorch reference models that `export` and `bench` accept by name."""
    from foldnorm.models import REGISTRY

    render_models(REGISTRY.values(), fmt)
