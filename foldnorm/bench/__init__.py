"""Stage 4, bench: folded against unfolded per backend (`foldnorm.bench.backends`), timed by one
interleaved loop, with accuracy, the environment and an optional plot."""

from foldnorm.bench.runner import BenchResult, benchmark

__all__ = ["BenchResult", "benchmark"]
