"""Stage 4, bench: folded against unfolded per backend (`foldnorm.bench.backends`), timed by one
interleaved loop, with accuracy, the environment and an optional plot."""

from foldnorm.bench.backends.base import RunOptions
from foldnorm.bench.runner import BenchResult, benchmark
from foldnorm.bench.timing import TimingOptions

__all__ = ["BenchResult", "RunOptions", "TimingOptions", "benchmark"]
