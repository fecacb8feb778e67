"""Progress of a benchmark: what it is doing, how far the current timing loop is, and how long the rest will take.

The library never prints: `benchmark(progress=...)` hands each `Step` to the caller (the CLI draws it on
stderr).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One progress update: a message, the fraction (0..1) of the timing loop it belongs to (None outside one),
    and the estimated seconds left for the whole benchmark (None until there is something to estimate from)."""

    message: str
    fraction: float | None = None
    eta_s: float | None = None


Progress = Callable[[Step], None]


def eta_text(seconds: float) -> str:
    """`1:05 left`: minutes and seconds."""
    whole = max(round(seconds), 0)
    return f"{whole // 60}:{whole % 60:02d} left"


class Eta:
    """Estimates the time left in a run of `total` configurations: the rest of the current one plus the
    configurations not started, each taking as long as the mean of those finished so far (before any has
    finished: as long as the current one is projected to take, once its timing loop has begun)."""

    def __init__(self, total: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self.clock = clock
        self.finished: list[float] = []
        self.started: float | None = None
        self.timing_started: float | None = None

    def start(self) -> None:
        """A configuration starts (opening its sessions)."""
        self.started = self.clock()
        self.timing_started = None

    def timing(self) -> None:
        """Its timing loop starts (after warm-up)."""
        self.timing_started = self.clock()

    def finish(self, timed: bool = True) -> None:
        """The configuration is done (`timed=False`: it could not run, and counts for nothing)."""
        if not timed:
            self.total -= 1
        elif self.started is not None:
            self.finished.append(self.clock() - self.started)
        self.started = self.timing_started = None

    def left(self, fraction: float | None = None) -> float | None:
        """Seconds left for every configuration, given the fraction done of the current timing loop."""
        now = self.clock()
        waiting = self.total - len(self.finished) - (self.started is not None)
        current_left, projected = 0.0, None
        if self.started is not None and self.timing_started is not None and fraction:
            loop = now - self.timing_started
            current_left = loop * (1.0 - fraction) / fraction
            projected = (now - self.started) + current_left
        per_config = sum(self.finished) / len(self.finished) if self.finished else projected
        if per_config is None:
            return None
        if self.started is not None and projected is None:  # opening or warming up: assume a typical one
            current_left = max(per_config - (now - self.started), 0.0)
        return current_left + waiting * per_config
