"""`foldnorm bench`: folded vs unfolded, latency and accuracy, per backend, configuration and precision."""

from __future__ import annotations

import os
from pathlib import Path

import click

from foldnorm.bench.backends import BACKENDS
from foldnorm.bench.backends.base import OPT_LEVELS, PRECISIONS, OptLevel, Precision
from foldnorm.errors import OutputPathError, VerificationError
from foldnorm.export.exporter import Exporter
from foldnorm.onnxgraph.inputs import Shape

from .options import (
    batch_sizes_option,
    comma_choices,
    exporter_option,
    format_option,
    input_shapes_option,
    seed_option,
    threads_option,
)
from .render.bench import RENDERERS, BenchFormat, Progress, write_outputs
from .render.common import info


def _check_output_dir(directory: Path, model: str | None) -> None:
    """Refuse an --output directory that cannot be created or written, or whose files would replace the
    model or its data (or something that is not a file), before any timing is done."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{directory}: {existing} is a file, not a directory; choose another --output directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{directory}: {existing} is not writable; choose another --output directory")
    from foldnorm.onnxgraph.modelio import model_files
    from foldnorm.onnxgraph.outputs import check_distinct

    inputs = model_files(model) if model is not None and model.endswith(".onnx") else []
    check_distinct([("a bench output", directory / f"bench.{ext}") for ext in ("txt", "json", "csv", "md", "png")],
                   [("the model", f) for f in inputs])


@click.command()
@click.argument("model", required=False)
@click.option("--backend", "backends", multiple=True, default=["ort-cpu"], show_default=True,
              type=click.Choice([*BACKENDS, "all"]),
              help="Backend to time (repeatable); `all` runs every available one and lists the rest.")
@click.option("--ort-opt", default="disabled,all", show_default=True, callback=comma_choices(OPT_LEVELS),
              help="ONNX Runtime optimization levels to time, comma-separated (disabled|basic|extended|all).")
@click.option("--precision", default="fp32,fp16", show_default=True, callback=comma_choices(PRECISIONS),
              help="Precisions for GPU backends (tensorrt, ort-trt, torch on CUDA), comma-separated.")
@threads_option("CPU intra-op threads for ort-cpu and torch (0: the runtime's default; at most 4x the CPUs).")
@batch_sizes_option("Batch size of the timed runs; several, comma-separated (1,8,32), give rows per batch size. A "
                    "model with a static batch runs at its own batch only.", default="1", name="--batch-size")
@click.option("--max-batch-size", type=click.IntRange(min=1),
              help="Largest batch a TensorRT engine accepts (dynamic-batch models; default: the batch timed).")
@input_shapes_option("Input shape, e.g. 1x3x224x224, or NAME:1x3x224x224; repeat for several inputs, in order or "
                     "named. A PyTorch model is exported with them (default: a built-in model's own); for an .onnx "
                     "file they size dynamic dims.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed runs per variant before timing.")
@click.option("--min-time", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds each variant is timed at least.")
@click.option("--iterations", type=click.IntRange(min=1), help="Exact number of timed runs per variant.")
@seed_option()
@exporter_option("How a PyTorch model is exported first (as in `foldnorm export`).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where TensorRT engines and timing caches are kept (default: ~/.cache/foldnorm).")
@click.option("--cuda-graph", is_flag=True,
              help="ort-cuda, ort-trt, tensorrt: capture a run in a CUDA graph and replay it (trtexec --useCudaGraph).")
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also save bench.txt, bench.json (with raw samples), bench.csv and bench.md in this directory.")
@click.option("--plot", is_flag=True, help="With --output: also save bench.png (needs foldnorm[plot]).")
@format_option(BenchFormat)
def bench(model: str | None, backends: tuple[str, ...], ort_opt: list[OptLevel], precision: list[Precision],
          threads: int, batch_sizes: tuple[int, ...], max_batch_size: int | None,
          input_shapes: list[tuple[str | None, Shape]], warmup: int,
          min_time: float, iterations: int | None, seed: int, exporter: Exporter, cache_dir: Path | None,
          cuda_graph: bool, output_dir: Path | None, plot: bool, fmt: BenchFormat) -> None:
    """Benchmark MODEL folded against unfolded (default: the built-in resnet-bn).

    MODEL is a built-in name (see `foldnorm models`), an import spec package.module:attr, or a .onnx file.
    Every row's accuracy is measured against the unfolded model on ONNX Runtime CPU with optimizations
    disabled; backends that cannot run here are listed with the reason and an install hint. The output ends
    with the verdict: per configuration, the speed-up of folding and whether its IQR excludes 1.0.
    """
    from foldnorm.bench.runner import benchmark

    if plot and output_dir is None:
        raise click.BadParameter("--plot writes bench.png into the --output directory; give --output DIR",
                                 param_hint="--plot")
    if output_dir is not None:
        _check_output_dir(output_dir, model)
    if plot:
        import importlib.util

        from foldnorm.bench.plot import PLOT_INSTALL_HINT

        if importlib.util.find_spec("matplotlib") is None:
            raise click.UsageError(f"--plot needs matplotlib, which is not installed; install: {PLOT_INSTALL_HINT}")
    if model is None:
        from foldnorm.models import DEFAULT_MODEL

        model = DEFAULT_MODEL
    shapes = ({name: shape for name, shape in input_shapes if name} if any(n for n, _ in input_shapes)
              else [shape for _, shape in input_shapes] or None)
    result = benchmark(model, backends=backends, ort_opt=ort_opt, precisions=precision, threads=threads,
                       batch_size=batch_sizes, max_batch_size=max_batch_size, input_shapes=shapes,
                       warmup=warmup, min_time_s=min_time, iterations=iterations, seed=seed, exporter=exporter,
                       cache_dir=cache_dir, cuda_graph=cuda_graph, progress=Progress())
    click.echo(RENDERERS[fmt](result))
    if output_dir is not None:
        for path in write_outputs(result, output_dir, plot):
            info(f"wrote {path}")
    if not result.verify.ok:
        raise VerificationError("the folded model is not equivalent to the unfolded one; see the results on stdout")
