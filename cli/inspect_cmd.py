"""`foldnorm inspect`: list every normalization node and whether (and why) it can be folded; writes nothing."""

from __future__ import annotations

from pathlib import Path

import click

from .fold_cmd import report_table
from .options import format_option, rule_options
from .render import emit_json


@click.command(short_help="What fold would do to each norm node; writes nothing.")
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--standalone-bn", type=click.Choice(["keep", "affine"]), default="keep", show_default=True,
              help="Report as if `fold --standalone-bn` had this value.")
@rule_options
@format_option("text", "json")
def inspect(input_path: Path, standalone_bn: str, skip: tuple[str, ...], only: tuple[str, ...], fmt: str) -> None:
    """List every normalization node of IN.onnx and whether it can be folded, and why; nothing is written.

    In the table, `folded` means "fold would fold it"; `skipped` and `kept` say why not.
    """
    from foldnorm.fold.engine import inspect_model
    from foldnorm.fold.options import FoldOptions

    options = FoldOptions(standalone_bn=standalone_bn, skip=skip, only=only)  # type: ignore[arg-type]
    report = inspect_model(input_path, options=options)
    if fmt == "json":
        emit_json({"input": str(input_path), "report": report.to_dict()})
        return
    click.echo(report_table(report))
