"""`foldnorm export`: a faithful, unfolded ONNX file from a built-in model or an import spec."""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.errors import VerificationError
from foldnorm.export.exporter import ExportDtype, Exporter
from foldnorm.onnxgraph.inputs import Shape

from .options import choice, exporter_option, format_option, input_shapes_option, tolerance_options
from .render.common import Format, info
from .render.export import render_export


@click.command()
@click.argument("model")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@input_shapes_option("Example input shape, e.g. 1x3x224x224, or NAME:1x3x224x224; repeat for several inputs "
                     "(default: the built-in model's own).")
@click.option("--dtype", type=choice(ExportDtype), default="float32", show_default=True,
              help="Convert the module and inputs first (bfloat16 exports are not checked: ONNX Runtime CPU lacks "
                   "the kernels).")
@click.option("--opset", type=click.IntRange(7, 23), default=18, show_default=True,
              help="ONNX opset (GroupNormalization as one node needs 21).")
@exporter_option("torch.onnx exporter (legacy: the TorchScript one).")
@click.option("--static", is_flag=True, help="Fix the batch size instead of a dynamic batch axis.")
@click.option("--dynamic-batch", is_flag=True,
              help="Fail when torch cannot keep the batch axis dynamic (by default the batch then becomes static, "
                   "with a note).")
@click.option("--external-data", is_flag=True, help="Store the weights in OUTPUT.data beside the model.")
@click.option("--train-ok", is_flag=True, help="Export a module left in train mode (BN uses running stats).")
@tolerance_options
@format_option(Format)
def export(model: str, output: Path, input_shapes: list[tuple[str | None, Shape]], dtype: ExportDtype, opset: int,
           exporter: Exporter, static: bool, dynamic_batch: bool, external_data: bool, train_ok: bool,
           rtol: float | None, atol: float | None, fmt: Format) -> None:
    """Export MODEL (a built-in name or package.module:attr) to ONNX with every BatchNorm still present.

    The export is checked against the PyTorch module on ONNX Runtime (optimizations disabled) at two batch
    sizes; a mismatch exits 3.
    """
    if static and dynamic_batch:
        raise click.UsageError("--static and --dynamic-batch contradict each other; give one")
    import torch

    from foldnorm.export.exporter import export_onnx
    from foldnorm.export.sources import load_module

    module, default_shapes, label = load_module(model)
    shapes = [shape for _, shape in input_shapes] or list(default_shapes or ())
    if not shapes:
        raise click.BadParameter("give --input-shape for an import spec, e.g. 1x3x224x224",
                                 param_hint="--input-shape")
    names = [name for name, _ in input_shapes if name] or None
    described = ", ".join((f"{n}:" if n else "") + "x".join(map(str, s))
                          for n, s in zip([n for n, _ in input_shapes] or [None], shapes))
    info(f"exporting {label} ({exporter}, opset {opset}, {dtype}) with input {described}")
    gen = torch.Generator().manual_seed(0)
    result = export_onnx(module, [torch.randn(s, generator=gen) for s in shapes], output, input_names=names,
                         opset=opset, exporter=exporter, dynamic_batch=not static, train_ok=train_ok, dtype=dtype,
                         external_data=external_data, require_dynamic_batch=dynamic_batch, rtol=rtol, atol=atol)
    render_export(result, fmt)
    if not result.ok:
        reason = result.check_note or f"max rel error {result.max_rel:.3g}"
        raise VerificationError(f"the exported ONNX model does not match {label} in PyTorch ({reason}); "
                                "the file was kept for inspection")
