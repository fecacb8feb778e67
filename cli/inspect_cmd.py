"""`foldnorm inspect`: list every normalization node and whether (and why) it can be folded; writes nothing."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.fold.options import FoldOptions, StandaloneBN

from .options import (
    format_option,
    inputs_as_constants_option,
    requantize_option,
    rule_options,
    standalone_bn_option,
)
from .render.common import Format
from .render.fold import render_inspect


@click.command()
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True, path_type=Path))
@standalone_bn_option("Report as if `fold --standalone-bn` had this value.")
@rule_options
@format_option(Format)
@requantize_option
@inputs_as_constants_option
def inspect(input_path: Path, standalone_bn: StandaloneBN, skip: tuple[str, ...], only: tuple[str, ...],
            fmt: Format, requantize: bool, inputs_as_constants: bool) -> None:
    """List every normalization node of IN.onnx and whether it can be folded, and why; nothing is written.

    In the table, `folded` means "fold would fold it"; `skipped` and `kept` say why not.
    """
    from foldnorm.fold.engine import inspect_model
    options = FoldOptions(standalone_bn=standalone_bn, skip=skip, only=only, requantize=requantize,
                          inputs_as_constants=inputs_as_constants)
    report = inspect_model(input_path, options=options)
    render_inspect(input_path, report, fmt)
