"""The speed-up of folding and the verdict it supports.

Both variants of a configuration run back to back in every round (`foldnorm.bench.timing`), so the ratio of
each round's pair cancels load that comes and goes; the speed-up is the median of those per-round ratios, and
its interquartile range (IQR) says how stable it was. Folding made a measurable difference when that IQR
excludes 1.0. The ratio of the two p50 latencies is kept beside it: when the two disagree by more than
`DISAGREEMENT` the machine's speed changed during the run (the p50s of the two variants then come from
different moments), and the row is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: A row is flagged when its p50 ratio and its median per-round ratio differ by more than this fraction.
DISAGREEMENT = 0.10


def paired_speedup(base: Sequence[float], other: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Median and interquartile range of the per-round ratios base/other.

    Both samples of a round ran back to back, so load that comes and goes hits both; the ratio of each
    pair cancels it where the ratio of two medians would not.
    """
    ratios = np.asarray(base, dtype=np.float64) / np.maximum(np.asarray(other, dtype=np.float64), 1e-12)
    lo, mid, hi = np.percentile(ratios, [25, 50, 75])
    return float(mid), (float(lo), float(hi))


def speedup_stats(base: Sequence[float], other: Sequence[float]) -> tuple[float, tuple[float, float], float]:
    """`paired_speedup` of the two samples, and the ratio of their medians (the p50 ratio) beside it."""
    median, iqr = paired_speedup(base, other)
    return median, iqr, float(np.median(base) / max(float(np.median(other)), 1e-12))


def ratios_disagree(p50_ratio: float, speedup: float) -> bool:
    """Whether the p50 ratio and the median per-round ratio differ by more than `DISAGREEMENT`."""
    return abs(p50_ratio / speedup - 1.0) > DISAGREEMENT if speedup > 0 else True


def ratio_number(value: float) -> str:
    """A ratio with two decimals, three where two would round a real difference from 1 to 1.00."""
    return f"{value:.3f}" if round(value, 2) == 1.0 and value != 1.0 else f"{value:.2f}"


def ratio_text(value: float) -> str:
    """A speed-up as `1.09x` (see `ratio_number`)."""
    return f"{ratio_number(value)}x"


@dataclass(frozen=True)
class Verdict:
    """What folding did on one backend configuration: the speed-up, its IQR, and whether the IQR excludes 1.0.

    `where` names the configuration (backend and config, plus precision and batch where a benchmark has
    several of them).
    """

    backend: str
    config: str
    precision: str
    batch_size: int
    where: str
    speedup: float
    iqr: tuple[float, float]

    @property
    def significant(self) -> bool:
        """The per-round ratios' IQR lies wholly above or below 1.0."""
        return self.iqr[0] > 1.0 or self.iqr[1] < 1.0

    def text(self) -> str:
        """`1.09x faster on torch device=cpu (IQR 1.07-1.12, significant)` or `no measurable difference on ...`."""
        iqr = f"IQR {ratio_number(self.iqr[0])}-{ratio_number(self.iqr[1])}"
        if not self.significant:
            return f"no measurable difference on {self.where} ({iqr})"
        if self.speedup >= 1.0:
            return f"{ratio_text(self.speedup)} faster on {self.where} ({iqr}, significant)"
        return f"slower on {self.where}: {ratio_text(self.speedup)} ({iqr}, significant)"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, the sentence included."""
        return {"backend": self.backend, "config": self.config, "precision": self.precision,
                "batch_size": self.batch_size, "speedup": self.speedup, "iqr": list(self.iqr),
                "significant": self.significant, "text": self.text()}


def verdict_line(verdicts: Sequence[Verdict]) -> str:
    """`folding: 1.09x faster on ...; no measurable difference on ...` (one clause per configuration)."""
    if not verdicts:
        return "folding: nothing was timed"
    return "folding: " + "; ".join(v.text() for v in verdicts)
