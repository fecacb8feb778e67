"""`foldnorm verify`: does CANDIDATE compute what REF computes, and are REF's GN/LN/IN nodes intact?"""

from __future__ import annotations

from pathlib import Path

import click

from foldnorm.errors import VerificationError
from foldnorm.onnxgraph.inputs import Shape

from .options import (
    batch_sizes_option,
    data_options,
    format_option,
    metric_options,
    named_shapes_option,
    seed_option,
    tolerance_options,
)
from .render.common import Format
from .render.verify import render_verify


@click.command()
@click.argument("reference", metavar="REF.onnx", type=click.Path(path_type=Path))
@click.argument("candidate", metavar="CANDIDATE.onnx", type=click.Path(path_type=Path))
@batch_sizes_option("Batch sizes to try on a symbolic batch axis, comma-separated.")
@named_shapes_option("Shape of an input with dynamic dims (repeatable; the name may be left out on a one-input "
                     "model); a symbolic batch axis takes --batch-sizes.")
@seed_option()
@click.option("--samples", type=click.IntRange(min=1), default=1, show_default=True,
              help="Random input draws per batch size.")
@data_options
@tolerance_options
@metric_options
@click.option("--noise-floor", "noise", is_flag=True,
              help="When an output misses its tolerance, measure REF's own change under a one-ulp input change "
                   "and accept errors within 10x of it.")
@click.option("--localize", is_flag=True,
              help="When outputs differ, find the first tensor (in REF's order) where CANDIDATE diverges and "
                   "print its node, op, module and the errors there and at its inputs.")
@click.option("--structure/--no-structure", default=True, show_default=True,
              help="Also require every GroupNorm/LayerNorm/InstanceNorm of REF to be intact in CANDIDATE.")
@format_option(Format)
def verify(reference: Path, candidate: Path, batch_sizes: tuple[int, ...], shapes: dict[str, Shape], seed: int,
           samples: int, inputs: Path | None, data_loader: str | None, save_inputs: Path | None,
           save_outputs: Path | None, rtol: float | None, atol: float | None, metric: str, min_cosine: float,
           noise: bool, localize: bool, structure: bool, fmt: Format) -> None:
    """Compare CANDIDATE with REF on the same inputs (ONNX Runtime, CPU, optimizations disabled).

    Reports per output the max absolute and relative error (relative to the reference output's max |value|),
    the elements outside tolerance and the NaN/Inf introduced; and how many BatchNorms each model has.
    Models of different float precisions compare (inputs drawn for REF, cast for CANDIDATE; tolerances from
    CANDIDATE's dtype). Exit 0 when equivalent, 3 when not, 1 when the models cannot be compared.
    """
    from foldnorm.verify.compare import compare_models
    from foldnorm.verify.data import load_data_loader

    feeds = load_data_loader(data_loader) if data_loader else inputs
    result = compare_models(reference, candidate, batch_sizes=batch_sizes, seed=seed, samples=samples,
                            shapes=shapes, inputs=feeds, rtol=rtol, atol=atol, structure=structure, metric=metric,
                            min_cosine=min_cosine, localize_failure=localize, noise=noise,
                            save_inputs=save_inputs, save_outputs=save_outputs)
    if data_loader:
        result.inputs = data_loader
    render_verify(result, fmt)
    if not result.ok:
        raise VerificationError(f"{candidate} is not equivalent to {reference}; see the results on stdout")
