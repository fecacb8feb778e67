"""`foldnorm verify`: does CANDIDATE compute what REF computes, and are REF's GN/LN/IN nodes intact?"""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.errors import VerificationError
from foldnorm.onnxgraph.inputs import Shape
from foldnorm.verify.compare import VerifyResult

from .options import batch_sizes_option, format_option, named_shapes_option, tolerance_option
from .render import emit_json, table


def verify_table(result: VerifyResult) -> str:
    """Per-output errors as a table, then the structure line and the verdict."""
    rows = [(o.name, o.dtype, o.max_abs, o.max_rel, f"{o.mismatched}/{o.total}", o.nonfinite_introduced,
             o.rtol, o.atol, "ok" if o.ok else "FAIL") for o in result.outputs]
    lines = [table(["output", "dtype", "max abs err", "max rel err", "outside tol", "NaN/Inf introduced",
                    "rtol", "atol", ""], rows)]
    if result.structure is not None:
        lines.append(result.structure.summary())
    lines.append(result.summary())
    return "\n".join(lines)


@click.command(short_help="Same outputs? GN/LN/IN intact? Exit 3 if not.")
@click.argument("reference", metavar="REF.onnx", type=click.Path(path_type=Path))
@click.argument("candidate", metavar="CANDIDATE.onnx", type=click.Path(path_type=Path))
@click.option("--batch-sizes", callback=batch_sizes_option, default="1,2", show_default=True,
              help="Batch sizes to try on a symbolic batch axis, comma-separated.")
@click.option("--shape", "--input-shape", "shapes", multiple=True, callback=named_shapes_option,
              metavar="NAME:1x3x224x224",
              help="Shape of an input with dynamic dims (repeatable); a symbolic batch axis takes --batch-sizes.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Random input draws per batch size.")
@click.option("--inputs", "inputs", type=click.Path(path_type=Path),
              help="Real inputs: an .npz with one array per model input (replaces the random inputs).")
@click.option("--rtol", type=float, callback=tolerance_option, help="Relative tolerance, times the reference output's "
              "max |value| (default per dtype: fp32 1e-4, fp16 1e-2, bf16 5e-2, fp64 1e-9, integers 0).")
@click.option("--atol", type=float, callback=tolerance_option, help="Absolute tolerance (default per dtype: fp32 1e-6, "
              "fp16 1e-3, bf16 1e-2, fp64 1e-12, integers 0).")
@click.option("--structure/--no-structure", default=True, show_default=True,
              help="Also require every GroupNorm/LayerNorm/InstanceNorm of REF to be intact in CANDIDATE.")
@format_option("text", "json")
def verify(reference: Path, candidate: Path, batch_sizes: tuple[int, ...], shapes: dict[str, Shape], seed: int,
           samples: int, inputs: Path | None, rtol: float | None, atol: float | None, structure: bool,
           fmt: str) -> None:
    """Compare CANDIDATE with REF on the same inputs (ONNX Runtime, CPU, optimizations disabled).

    Reports per output the max absolute and relative error (relative to the reference output's max |value|),
    the elements outside tolerance and the NaN/Inf introduced; and how many BatchNorms each model has.
    Exit 0 when equivalent, 3 when not, 1 when the models cannot be compared (different interfaces, bad files).
    """
    from foldnorm.verify.compare import compare_models

    result = compare_models(reference, candidate, batch_sizes=batch_sizes, seed=seed, samples=samples,
                            shapes=shapes, inputs=inputs, rtol=rtol, atol=atol, structure=structure)
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        click.echo(verify_table(result))
    if not result.ok:
        raise VerificationError(f"{candidate} is not equivalent to {reference}; see the results on stdout")
