"""`foldnorm fold`: fold the BatchNorms of an ONNX file, verify, and report every normalization node."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.errors import VerificationError
from foldnorm.report import FoldReport
from foldnorm.workflows import FoldFileResult, fold_file

from .options import format_option
from .render import emit_json, info, table


def report_table(report: FoldReport) -> str:
    """The fold report as a text table plus its one-line summary."""
    rows = [(r.op_type, r.node, r.module, r.outcome, r.target, r.reason) for r in report.records]
    body = table(["op", "node", "module", "outcome", "target", "reason"], rows) if rows else \
        "no normalization nodes found"
    return f"{body}\n{report.summary()}"


def _render(result: FoldFileResult, fmt: str, report_path: Path | None) -> None:
    if report_path is not None:
        report_path.write_text(result.report.to_json() + "\n")
    if fmt == "json":
        emit_json(result.to_dict())
        return
    click.echo(report_table(result.report))
    if result.verify is not None:
        click.echo(f"verify: {result.verify.summary()}")
    if result.output:
        click.echo(f"wrote {result.output}")


@click.command()
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Folded model to write.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare folded and original on ONNX Runtime before writing.")
@click.option("--standalone-bn", type=click.Choice(["keep", "affine"]), default="keep", show_default=True,
              help="A BN with nothing to fold into: keep it, or lower it to one Mul and one Add.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Also write the JSON report here.")
@format_option("text", "json")
def fold(input_path: Path, output: Path, verify: bool, standalone_bn: str, report_path: Path | None,
         fmt: str) -> None:
    """Fold BatchNorm into neighbouring Conv/ConvTranspose/Gemm/MatMul and write OUT.

    Exit 3 (and nothing written) when the folded model does not compute what the input computes.
    """
    from foldnorm.passes import FoldOptions

    info(f"folding {input_path}")
    try:
        result = fold_file(input_path, output, verify=verify,
                           options=FoldOptions(standalone_bn=standalone_bn))  # type: ignore[arg-type]
    except VerificationError as exc:
        failed = getattr(exc, "result", None)
        if isinstance(failed, FoldFileResult):
            _render(failed, fmt, report_path)
        raise
    _render(result, fmt, report_path)
