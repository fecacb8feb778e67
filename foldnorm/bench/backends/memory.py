"""The memory of one session on process-wide allocator counters (torch's CUDA allocator).

Both variants of a configuration are open at once, so a process-wide peak would give both rows the same
figure. A `PeakMeter` counts only its own session: what the session keeps allocated (its weights, measured
around loading them) plus the highest rise above the starting level during each of its runs (the peak is
reset when a run starts, and that run is the only work in flight).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class PeakMeter:
    """One session's memory: `allocated()` bytes now, `reset_peak()`, `peak()` bytes since the last reset."""

    allocated: Callable[[], int]
    reset_peak: Callable[[], None]
    peak: Callable[[], int]
    held: int = 0
    highest_run: int = 0

    def keeping(self, load: Callable[[], T]) -> T:
        """Call `load` and count what it leaves allocated as held by the session."""
        before = self.allocated()
        result = load()
        self.held += self.allocated() - before
        return result

    def running(self, run: Callable[[], T]) -> T:
        """Call `run` and record how far the allocation rose above its level at the start."""
        start = self.allocated()
        self.reset_peak()
        result = run()
        self.highest_run = max(self.highest_run, self.peak() - start)
        return result

    def bytes(self) -> int:
        """Held bytes plus the highest rise of any measured run."""
        return self.held + self.highest_run
