"""The one timing loop: interleaved runs of several variants, so machine drift hits them alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    """Latency percentiles in milliseconds over `iterations` timed runs."""

    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> LatencyStats:
        """Summarize raw samples given in seconds."""
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        return cls(
            iterations=int(ms.size),
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std()),
            min_ms=float(ms.min()),
        )

    def throughput(self, batch_size: int) -> float:
        """Samples per second at the median latency."""
        return batch_size * 1e3 / self.p50_ms if self.p50_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class TimingOptions:
    """How long each configuration is timed: `warmup` untimed runs per variant, then at least `min_time_s`
    seconds and 10 runs each, or exactly `iterations` runs when given."""

    warmup: int = 5
    min_time_s: float = 1.0
    iterations: int | None = None


@dataclass(frozen=True)
class Timed:
    """One variant to time: `run` queues the work, `sync` waits for it (a no-op on CPU).

    `device_elapsed`, when given, returns the device's own time (s) for the last run (CUDA events);
    otherwise the loop measures wall time around `run` + `sync`.
    """

    run: Callable[[], None]
    sync: Callable[[], None]
    device_elapsed: Callable[[], float] | None = None


def time_interleaved(
    variants: Mapping[str, Timed],
    *,
    warmup: int = 5,
    min_time_s: float = 1.0,
    min_iterations: int = 10,
    max_iterations: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> tuple[dict[str, LatencyStats], dict[str, list[float]]]:
    """Time every variant round-robin (order reversed every other round) until each has run for
    `min_time_s` and at least `min_iterations` times, or `max_iterations` is reached.

    `on_progress` gets 0.0 when the warm-up is over, then the fraction done (0..1) after every round. Returns
    the statistics and the raw samples (seconds) per variant.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name].run()
            variants[name].sync()
    if on_progress is not None:
        on_progress(0.0)
    samples: dict[str, list[float]] = {n: [] for n in names}
    spent = dict.fromkeys(names, 0.0)
    rounds = 0
    while True:
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            v = variants[name]
            start = time.perf_counter()
            v.run()
            v.sync()
            elapsed = time.perf_counter() - start
            if v.device_elapsed is not None:
                elapsed = v.device_elapsed()
            samples[name].append(elapsed)
            spent[name] += elapsed
        rounds += 1
        if on_progress is not None:
            on_progress(_fraction_done(rounds, min(spent.values()), min_time_s, min_iterations, max_iterations))
        if max_iterations is not None and rounds >= max_iterations:
            break
        if rounds >= min_iterations and min(spent.values()) >= min_time_s:
            break
    return {n: LatencyStats.from_samples(s) for n, s in samples.items()}, samples


def _fraction_done(rounds: int, spent_s: float, min_time_s: float, min_iterations: int,
                   max_iterations: int | None) -> float:
    if max_iterations is not None:
        return min(1.0, rounds / max_iterations)
    by_time = spent_s / min_time_s if min_time_s > 0 else 1.0
    return min(1.0, by_time, rounds / max(min_iterations, 1))
