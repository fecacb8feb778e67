"""`foldnorm bench`: folded vs unfolded, latency and accuracy, per backend."""

from __future__ import annotations

import click

from foldnorm.errors import VerificationError
from foldnorm.inputs import Shape

from .options import format_option, shape_option
from .render import emit_json, info, table


def bench_table(result: object) -> str:
    """The benchmark rows as a text table, with the fold and verification summary lines."""
    from foldnorm.bench import BenchResult

    assert isinstance(result, BenchResult)
    rows = [
        (r.backend, r.config, r.variant, r.latency.p50_ms, r.latency.p90_ms, r.speedup, r.max_abs, r.max_rel,
         result.batchnorm_folded if r.variant == "folded" else 0, result.fold_report.protected_kept)
        for r in result.rows
    ]
    text = table(["backend", "config", "variant", "p50 ms", "p90 ms", "speed-up", "max abs err", "max rel err",
                  "BN folded", "GN/LN/IN kept"], rows)
    lines = [f"model: {result.model} (batch {result.batch_size})", text,
             f"fold: {result.fold_report.summary()}", f"verify: {result.verify.summary()}"]
    lines += [f"{name}: {why}" for name, why in result.unavailable.items()]
    return "\n".join(lines)


@click.command()
@click.argument("model", required=False)
@click.option("--backend", "backends", multiple=True, default=["ort-cpu"], show_default=True,
              help="Backend to time (repeatable).")
@click.option("--ort-opt", default="disabled,all", show_default=True,
              help="ONNX Runtime optimization levels to time, comma-separated (disabled|basic|extended|all).")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="ONNX Runtime intra-op threads (0: default).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--input-shape", callback=shape_option, help="Input shape for a PyTorch model, e.g. 1x3x224x224.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--min-time", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds each variant is timed at least.")
@click.option("--iterations", type=click.IntRange(min=1), help="Exact number of timed runs per variant.")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True)
@format_option("text", "json")
def bench(model: str | None, backends: tuple[str, ...], ort_opt: str, threads: int, batch_size: int,
          input_shape: Shape | None, warmup: int, min_time: float, iterations: int | None, exporter: str,
          fmt: str) -> None:
    """Benchmark MODEL folded against unfolded (default: the built-in resnet-bn).

    MODEL is a built-in name (see foldnorm.models), an import spec package.module:attr, or a .onnx file.
    """
    from foldnorm.backends.ort_cpu import OPT_LEVELS
    from foldnorm.bench import benchmark

    levels = [o.strip() for o in ort_opt.split(",") if o.strip()]
    bad = [o for o in levels if o not in OPT_LEVELS]
    if bad or not levels:
        raise click.BadParameter(f"{','.join(bad) or ort_opt!r} is not in {', '.join(OPT_LEVELS)}",
                                 param_hint="--ort-opt")
    if model is None:
        from foldnorm.models import DEFAULT_MODEL

        model = DEFAULT_MODEL
    result = benchmark(model, backends=backends, ort_opt=levels, threads=threads, batch_size=batch_size,
                       input_shape=input_shape, warmup=warmup, min_time_s=min_time, iterations=iterations,
                       exporter=exporter, progress=info)  # type: ignore[arg-type]
    if fmt == "json":
        emit_json(result.to_dict())
    else:
        click.echo(bench_table(result))
    if not result.verify.ok:
        raise VerificationError("the folded model is not equivalent to the unfolded one; see the table above")
