"""`foldnorm fold`: fold the BatchNorms of an ONNX file, verify, and report every normalization node."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.errors import VerificationError
from foldnorm.fold.options import FoldOptions, StandaloneBN
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.onnxgraph.modelio import check_output_path
from foldnorm.workflows import fold_file

from .options import (
    format_option,
    inputs_as_constants_option,
    named_shapes_option,
    requantize_option,
    rule_options,
    seed_option,
    standalone_bn_option,
    tolerance_options,
)
from .render.common import Format, info
from .render.fold import render_fold_file


@click.command()
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True, path_type=Path))
@click.argument("out", metavar="[OUT.onnx]", required=False, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Folded model to write (a directory when IN is one); OUT may be given in its place.")
@click.option("--in-place", is_flag=True, help="Replace IN itself (atomically); -o may then be left out.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Models folded in parallel when IN is a directory.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare folded and original on ONNX Runtime before writing.")
@standalone_bn_option("A BN with nothing to fold into: keep it, or lower it to one Mul and one Add.")
@rule_options
@click.option("--report", "report_path", type=click.Path(path_type=Path),
              help="Also write the JSON report here (for a directory: one entry per model).")
@named_shapes_option("Shape of an input with dynamic dims other than the batch axis, for the verification "
                     "(repeatable).")
@seed_option("Seed of the verification's random inputs.")
@tolerance_options
@click.option("--worst", type=click.IntRange(min=1), metavar="N",
              help="Also list the N folds with the largest measured error.")
@format_option(Format)
@requantize_option
@inputs_as_constants_option
def fold(input_path: Path, out: Path | None, output: Path | None, in_place: bool, jobs: int, verify: bool,
         standalone_bn: StandaloneBN, skip: tuple[str, ...], only: tuple[str, ...], report_path: Path | None,
         shapes: dict[str, Shape], seed: int, rtol: float | None, atol: float | None, worst: int | None,
         fmt: Format, requantize: bool, inputs_as_constants: bool) -> None:
    """Fold BatchNorm into neighbouring Conv/ConvTranspose/Gemm/MatMul and write OUT.

    Exit 3 (and nothing written) when the folded model does not compute what the input computes; the error
    then names where the models first diverge. Each folded record carries the error measured where it folded.
    IN may be a directory: every *.onnx in it is folded into the directory -o (exit 1 if any failed).
    """
    options = FoldOptions(standalone_bn=standalone_bn, skip=skip, only=only, requantize=requantize,
                          inputs_as_constants=inputs_as_constants)
    if out is not None and output is not None and out != output:
        raise click.UsageError(f"two outputs given ({out} and -o {output}); give one")
    output = output or out or (input_path if in_place else None)
    if output is None:
        raise click.UsageError("give the output: foldnorm fold IN.onnx OUT.onnx, or -o OUT.onnx (or --in-place to "
                               "replace the input)")
    if report_path is not None:
        check_output_path(report_path)
    if input_path.is_dir():
        from .fold_dir import fold_dir

        return fold_dir(input_path, output, jobs=jobs, verify=verify, options=options, in_place=in_place, fmt=fmt,
                        report_path=report_path, shapes=shapes, seed=seed, tolerances=(rtol, atol))
    info(f"folding {input_path}")
    try:
        result = fold_file(input_path, output, verify=verify, options=options, in_place=in_place, shapes=shapes,
                           seed=seed, rtol=rtol, atol=atol, other_outputs=[report_path] if report_path else [])
    except VerificationError as exc:
        if exc.result is not None:
            render_fold_file(exc.result, fmt, report_path, worst)
        raise
    render_fold_file(result, fmt, report_path, worst)
