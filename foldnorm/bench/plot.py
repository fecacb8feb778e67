"""A PNG of a benchmark's latency distributions: one panel per backend configuration, unfolded vs folded.

matplotlib is an optional extra (`pip install 'foldnorm[plot]'`), imported only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from foldnorm.errors import FoldnormError
from foldnorm.onnxgraph.atomicfile import atomic_path

if TYPE_CHECKING:
    from foldnorm.bench.runner import BenchResult

PLOT_INSTALL_HINT = "pip install 'foldnorm[plot]'"


def plot_latency(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Write a box plot of every row's latency samples to `path` (PNG, written atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FoldnormError(f"--plot needs matplotlib, which is not installed; install: {PLOT_INSTALL_HINT}") from None
    groups: dict[str, dict[str, list[float]]] = {}
    for row in result.rows:
        key = f"{row.backend} {row.precision}\n{row.config}"
        groups.setdefault(key, {})[row.variant] = row.samples_ms
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(2.6 * max(len(groups), 1) + 1, 3.6), squeeze=False)
    for ax, (title, variants) in zip(axes[0], groups.items()):
        names = list(variants)
        ax.boxplot([variants[n] for n in names], showfliers=False, widths=0.6)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("latency (ms)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result.model}, batch {result.batch_size}: latency per run (whiskers 1.5 IQR)", fontsize=10)
    fig.tight_layout()
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)
    return target
