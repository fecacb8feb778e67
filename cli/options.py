"""Shared click options: one decorator per option that several commands take, and the value parsers behind
them (malformed values are usage errors, exit 2). Choices come from the library's Literal types, typed once."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

import click

from foldnorm.errors import InputSpecError
from foldnorm.fold.options import StandaloneBN
from foldnorm.onnxgraph.inputs import Shape, parse_named_shape

F = TypeVar("F", bound=Callable[..., Any])


def choice(literal: Any) -> click.Choice:
    """A `click.Choice` of the values of a `Literal` type."""
    return click.Choice(get_args(literal))


def format_option(formats: Any) -> Callable[[F], F]:
    """`--format` with the values of the `Literal` type `formats` (the first is the default)."""
    return click.option("--format", "fmt", type=choice(formats), default=get_args(formats)[0], show_default=True,
                        help="Output format on stdout.")


def seed_option(help: str = "Seed of the random inputs.") -> Callable[[F], F]:
    """`--seed N` (default 0) for the seeded random inputs of a check or a benchmark."""
    return click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help=help)


def standalone_bn_option(help: str) -> Callable[[F], F]:
    """`--standalone-bn keep|affine`: what becomes of a BatchNorm with nothing to fold into."""
    return click.option("--standalone-bn", type=choice(StandaloneBN), default="keep", show_default=True, help=help)


def exporter_option(help: str) -> Callable[[F], F]:
    """`--exporter dynamo|legacy`: which torch.onnx exporter writes the unfolded model."""
    from foldnorm.export.exporter import Exporter  # (only the commands that export load the exporter)

    return click.option("--exporter", type=choice(Exporter), default="dynamo", show_default=True, help=help)


def tolerance_options(f: F) -> F:
    """`--rtol` and `--atol`: override the per-dtype tolerances of the comparison."""
    f = click.option("--atol", type=click.FloatRange(min=0), callback=_tolerance,
                     help="Absolute tolerance (default per dtype: fp32 1e-6, fp16 1e-3, bf16 1e-2, fp64 1e-12, "
                          "integers 0).")(f)
    return click.option("--rtol", type=click.FloatRange(min=0), callback=_tolerance,
                        help="Relative tolerance, times the reference output's max |value| (default per dtype: "
                             "fp32 1e-4, fp16 1e-2, bf16 5e-2, fp64 1e-9, integers 0).")(f)


def metric_options(f: F) -> F:
    """`--metric max-rel|top1|topk:K|cosine` and `--min-cosine`: what "the same output" means for float outputs."""
    from foldnorm.verify.measure import MIN_COSINE

    f = click.option("--min-cosine", type=click.FloatRange(-1, 1), default=MIN_COSINE, show_default=True,
                     help="Smallest per-sample cosine similarity that passes with --metric cosine.")(f)
    return click.option("--metric", default="max-rel", show_default=True, callback=_metric,
                        metavar="max-rel|top1|topk:K|cosine",
                        help="max-rel: every element within tolerance; top1/topk:K: every row (last axis) has "
                             "the same top-K classes; cosine: every sample's cosine similarity >= --min-cosine.")(f)


def _metric(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: a metric name `Metric.parse` accepts (else a usage error)."""
    from foldnorm.verify.measure import Metric

    try:
        return Metric.parse(value).label
    except InputSpecError as exc:
        raise click.BadParameter(str(exc)) from None


def data_options(f: F) -> F:
    """`--inputs`, `--data-loader-script`, `--save-inputs` and `--save-outputs`: verification data on disk."""
    f = click.option("--save-outputs", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write both models' outputs (.npz, or .json as Polygraphy's RunResults).")(f)
    f = click.option("--save-inputs", type=click.Path(dir_okay=False, path_type=Path),
                     help="Write the inputs used (.npz, or .json as polygraphy run --save-inputs writes).")(f)
    f = click.option("--data-loader-script", "data_loader", metavar="FILE.py[:FUNC]",
                     help="Real inputs from FUNC() (default load_data) in FILE.py, yielding {input name: array} "
                          "dicts (Polygraphy's convention).")(f)
    return click.option("--inputs", "inputs", type=click.Path(path_type=Path),
                        help="Real inputs instead of random ones: an .npz (one array per input, or <i>/<name> for "
                             "several feeds) or a JSON file from polygraphy run --save-inputs.")(f)


def batch_sizes_option(help: str, default: str = "1,2", name: str = "--batch-sizes") -> Callable[[F], F]:
    """`--batch-sizes 1,4` (or another `name`): positive batch sizes, comma-separated, as `batch_sizes`."""
    return click.option(name, "batch_sizes", callback=_batch_sizes, default=default, show_default=True, help=help)


def input_shapes_option(help: str) -> Callable[[F], F]:
    """`--input-shape/--shape [NAME:]1x3x224x224`, repeatable: one per input, named on all of them or on none."""
    return click.option("--input-shape", "--shape", "input_shapes", multiple=True, callback=_shape_list, help=help)


def named_shapes_option(help: str) -> Callable[[F], F]:
    """`--shape/--input-shape NAME:1x3x224x224`, repeatable: the sizes of named inputs' dynamic dims (the name may
    be left out on a model with one input: key "")."""
    return click.option("--shape", "--input-shape", "shapes", multiple=True, callback=_named_shapes,
                        metavar="NAME:1x3x224x224", help=help)


def comma_choices(allowed: tuple[str, ...]) -> Callable[[click.Context, click.Parameter, str], list[str]]:
    """Click callback: comma-separated values, each one of `allowed` (the list in the order given)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
        values = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise click.BadParameter(f"{','.join(bad) or value!r} is not in {', '.join(allowed)}",
                                     param_hint=param.opts[0])
        return values

    return parse


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
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


def _named_shapes(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, Shape]:
    """Click callback: parse repeated `[NAME:]1x3x224x224` into `{name: shape}` (no name: key "")."""
    shapes: dict[str, Shape] = {}
    for text in value:
        try:
            name, shape = parse_named_shape(text)
        except InputSpecError as exc:
            raise click.BadParameter(str(exc)) from None
        shapes[name or ""] = shape
    return shapes


def _shape_list(ctx: click.Context, param: click.Parameter,
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


def _tolerance(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback: a tolerance is finite (FloatRange lets NaN and infinity through; NaN would make every
    comparison pass)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{value} is not a finite number >= 0; give e.g. 1e-4")
    return value


def threads_option(help: str) -> Callable[[F], F]:
    """`--threads N`: 0 (the runtime's default) up to 4x the CPUs this process may use."""
    return click.option("--threads", type=click.IntRange(min=0), default=0, callback=_threads, help=help)


def _threads(ctx: click.Context, param: click.Parameter, value: int) -> int:
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


def requantize_option(f: F) -> F:
    """`--requantize`: let folds into quantized (QDQ) weights that cannot stay exact requantize them."""
    return click.option("--requantize", is_flag=True,
                        help="Quantized (QDQ) weights that cannot take a fold exactly are requantized (the report "
                             "gives the error) instead of refused.")(f)


def inputs_as_constants_option(f: F) -> F:
    """`--inputs-as-constants`: read initializers that are also graph inputs as constants (always below IR 4)."""
    return click.option("--inputs-as-constants", is_flag=True,
                        help="Read initializers that are also listed as graph inputs (overridable defaults from IR "
                             "version 4 on) as constants: they fold, and are no longer listed as inputs.")(f)
