"""`foldnorm fold`: fold the BatchNorms of an ONNX file, verify, and report every normalization node."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.errors import VerificationError
from foldnorm.fold.report import FoldReport
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.modelio import check_output_path
from foldnorm.workflows import FoldFileResult, fold_file

from .options import format_option, named_shapes_option, rule_options
from .render import emit_json, info, table, write_json


def report_table(report: FoldReport) -> str:
    """The fold report as a text table plus its one-line summary."""
    rows = [(r.op_type, r.node, r.module, r.outcome, r.target, r.reason) for r in report.records]
    body = table(["op", "node", "module", "outcome", "target", "reason"], rows) if rows else \
        "no normalization nodes found"
    return f"{body}\n{report.summary()}"


def _render(result: FoldFileResult, fmt: str, report_path: Path | None) -> None:
    if report_path is not None:
        write_json(report_path, result.report.to_dict())
    if fmt == "json":
        emit_json(result.to_dict())
        return
    click.echo(report_table(result.report))
    if result.verify is not None:
        click.echo(f"verify: {result.verify.summary()}")
    if result.output:
        click.echo(f"wrote {result.output}")


@click.command(short_help="Fold BatchNorm, verify, write OUT, report every norm.")
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Folded model to write (a directory when IN is one).")
@click.option("--in-place", is_flag=True, help="Replace IN itself (atomically); -o may then be left out.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Models folded in parallel when IN is a directory.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare folded and original on ONNX Runtime before writing.")
@click.option("--standalone-bn", type=click.Choice(["keep", "affine"]), default="keep", show_default=True,
              help="A BN with nothing to fold into: keep it, or lower it to one Mul and one Add.")
@rule_options
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Also write the JSON report here (for a directory: one entry per model).")
@click.option("--shape", "--input-shape", "shapes", multiple=True, callback=named_shapes_option,
              metavar="NAME:1x3x224x224",
              help="Shape of an input with dynamic dims other than the batch axis, for the verification "
                   "(repeatable).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the verification's random inputs.")
@format_option("text", "json")
def fold(input_path: Path, output: Path | None, in_place: bool, jobs: int, verify: bool, standalone_bn: str,
         skip: tuple[str, ...], only: tuple[str, ...], report_path: Path | None, shapes: dict[str, Shape], seed: int,
         fmt: str) -> None:
    """Fold BatchNorm into neighbouring Conv/ConvTranspose/Gemm/MatMul and write OUT.

    Exit 3 (and nothing written) when the folded model does not compute what the input computes.
    IN may be a directory: every *.onnx in it is folded into the directory -o (exit 1 if any failed).
    """
    from foldnorm.fold.options import FoldOptions

    options = FoldOptions(standalone_bn=standalone_bn, skip=skip, only=only)  # type: ignore[arg-type]
    output = output or (input_path if in_place else None)
    if output is None:
        raise click.UsageError("give the output with -o OUT.onnx (or --in-place to replace the input)")
    if report_path is not None:
        check_output_path(report_path)
    if input_path.is_dir():
        from .fold_dir import fold_dir

        return fold_dir(input_path, output, jobs=jobs, verify=verify, options=options, in_place=in_place, fmt=fmt,
                        report_path=report_path, shapes=shapes, seed=seed)
    info(f"folding {input_path}")
    try:
        result = fold_file(input_path, output, verify=verify, options=options, in_place=in_place, shapes=shapes,
                           seed=seed, other_outputs=[report_path] if report_path else [])
    except VerificationError as exc:
        failed = getattr(exc, "result", None)
        if isinstance(failed, FoldFileResult):
            _render(failed, fmt, report_path)
        raise
    _render(result, fmt, report_path)
