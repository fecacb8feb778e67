"""`foldnorm export`: a faithful, unfolded ONNX file from a built-in model or an import spec."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.errors import VerificationError
from foldnorm.inputs import Shape

from .options import format_option, shape_option
from .render import emit_json, info


@click.command()
@click.argument("model")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@click.option("--input-shape", callback=shape_option, help="Example input shape, e.g. 1x3x224x224 "
              "(default: the built-in model's own).")
@click.option("--opset", type=click.IntRange(7, 23), default=18, show_default=True,
              help="ONNX opset (GroupNormalization as one node needs 21).")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True)
@click.option("--static", is_flag=True, help="Fix the batch size instead of a dynamic batch axis.")
@click.option("--train-ok", is_flag=True, help="Export a module left in train mode (BN uses running stats).")
@format_option("text", "json")
def export(model: str, output: Path, input_shape: Shape | None, opset: int, exporter: str, static: bool,
           train_ok: bool, fmt: str) -> None:
    """Export MODEL (a built-in name or package.module:attr) to ONNX with every BatchNorm still present.

    The export is checked against the PyTorch module on ONNX Runtime; a mismatch exits 3.
    """
    import torch

    from foldnorm.export import export_onnx
    from foldnorm.sources import load_module

    module, default_shape, label = load_module(model)
    shape = input_shape or default_shape
    if shape is None:
        raise click.BadParameter("give --input-shape for an import spec, e.g. 1x3x224x224",
                                 param_hint="--input-shape")
    info(f"exporting {label} with input {'x'.join(map(str, shape))}")
    result = export_onnx(module, [torch.randn(shape)], output, opset=opset,
                         exporter=exporter,  # type: ignore[arg-type]
                         dynamic_batch=not static, train_ok=train_ok)
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        click.echo(result.summary())
    if not result.ok:
        raise VerificationError(f"the exported ONNX model does not match {label} in PyTorch "
                                f"(max rel error {result.max_rel:.3g}); the file was kept for inspection")
