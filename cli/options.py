"""Shared click options and value parsers (malformed values are usage errors, exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from foldnorm.errors import InputSpecError
from foldnorm.inputs import Shape, parse_shape

F = TypeVar("F", bound=Callable[..., Any])


def shape_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Shape | None:
    """Click callback: parse `1x3x224x224`."""
    if value is None:
        return None
    try:
        return parse_shape(value)
    except InputSpecError as exc:
        raise click.BadParameter(str(exc)) from None


def format_option(*choices: str) -> Callable[[F], F]:
    """`--format` with the given choices (the first is the default)."""
    return click.option("--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True,
                        help="Output format on stdout.")
