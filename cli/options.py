"""Shared click options and value parsers (malformed values are usage errors, exit 2)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import click

from foldnorm.errors import InputSpecError
from foldnorm.onnxgraph.inputs import Shape, parse_named_shape

F = TypeVar("F", bound=Callable[..., Any])


def shape_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Shape | None:
    """Click callback: parse `1x3x224x224` (a `NAME:` prefix, as in the other commands, is allowed)."""
    if value is None:
        return None
    try:
        return parse_named_shape(value)[1]
    except InputSpecError as exc:
        raise click.BadParameter(str(exc)) from None


def format_option(*choices: str) -> Callable[[F], F]:
    """`--format` with the given choices (the first is the default)."""
    return click.option("--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True,
                        help="Output format on stdout.")


def batch_sizes_option(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """Click callback: parse `1,4` into positive batch sizes."""
    if value is None:
        return None
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers such as 1,4") from None
    if not sizes or any(s <= 0 for s in sizes):
        raise click.BadParameter(f"{value!r}: batch sizes must be positive integers, e.g. 1,4")
    return sizes


def named_shapes_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Shape]:
    """Click callback: parse repeated `NAME:1x3x224x224` into `{name: shape}`."""
    shapes: dict[str, Shape] = {}
    for text in value:
        try:
            name, shape = parse_named_shape(text)
        except InputSpecError as exc:
            raise click.BadParameter(str(exc)) from None
        if name is None:
            raise click.BadParameter(f"{text!r} names no input; use NAME:1x3x224x224")
        shapes[name] = shape
    return shapes


def shape_list_option(ctx: click.Context, param: click.Parameter,
                      values: tuple[str, ...]) -> list[tuple[str | None, Shape]]:
    """Click callback: `1x3x224x224` or `NAME:1x3x224x224`, repeated; names on all of them or on none."""
    try:
        parsed = [parse_named_shape(v) for v in values]
    except InputSpecError as exc:
        raise click.BadParameter(str(exc)) from None
    named = {name is not None for name, _ in parsed}
    if len(named) > 1:
        raise click.BadParameter("name every input (NAME:1x3x224x224) or none of them")
    return parsed


def tolerance_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback: a tolerance is a finite number >= 0 (NaN would make every comparison pass)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a finite number >= 0; give e.g. 1e-4")
    return value


def threads_option(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """Click callback: 0 (the runtime's default) up to 4x the CPUs this process may use."""
    from foldnorm.bench.environment import check_threads

    try:
        check_threads(value)
    except InputSpecError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _rule_names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Click callback: fold rule names, checked against the registry (an unknown name is a usage error)."""
    from foldnorm.errors import UnknownRuleError
    from foldnorm.fold.options import check_rule_names

    try:
        return check_rule_names(value, f"--{param.name}")
    except UnknownRuleError as exc:
        raise click.UsageError(str(exc), ctx=ctx) from None


def _list_rules(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Eager click callback: print every fold rule's name and summary, then exit 0 (no IN needed)."""
    if not value or ctx.resilient_parsing:
        return
    from foldnorm.fold.rules import RULES

    width = max(len(rule.name) for rule in RULES)
    click.echo("\n".join(f"{rule.name:<{width}}  {rule.summary}" for rule in RULES))
    ctx.exit(0)


def rule_options(f: F) -> F:
    """`--list-rules`, `--skip RULE` and `--only RULE` (both repeatable): which fold rules run."""
    f = click.option("--only", multiple=True, metavar="RULE", callback=_rule_names,
                     help="Run only this fold rule, turning the others off (repeatable).")(f)
    f = click.option("--skip", multiple=True, metavar="RULE", callback=_rule_names,
                     help="Turn this fold rule off (repeatable); the report names it where it would have run.")(f)
    return click.option("--list-rules", is_flag=True, expose_value=False, is_eager=True, callback=_list_rules,
                        help="List the fold rules (name and what each folds) and exit.")(f)
