"""A PNG that answers "does folding help here?": the speed-up of every backend configuration with its IQR on one
axis with the 1.0 line, the latency distributions of both variants on one shared scale (p50, p90, p99 marked),
and, for a batch sweep, throughput and latency against the batch size. The title names the model, the batch,
the machine and the verdict.

matplotlib is an optional extra (`pip install 'foldnorm[plot]'`), imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foldnorm.bench.speedup import ratio_text
from foldnorm.errors import FoldnormError
from foldnorm.onnxgraph.atomicfile import atomic_path

if TYPE_CHECKING:
    from foldnorm.bench.result import BenchResult, BenchRow
    from foldnorm.bench.speedup import Verdict

PLOT_INSTALL_HINT = "pip install 'foldnorm[plot]'"

FASTER, SLOWER, SAME = "#1b7f3b", "#b8322a", "#5a5a5a"
VARIANT_COLOURS = {"unfolded": "#4c72b0", "folded": "#dd8452"}
PERCENTILE_MARKERS = (("p50", 50, "o"), ("p90", 90, "^"), ("p99", 99, "D"))
FONT_SIZE = 11
DPI = 100
WIDTH_IN = 11.0
LABELS_IN = 2.7  # left margin for the configuration labels


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FoldnormError(f"--plot needs matplotlib, which is not installed; install: {PLOT_INSTALL_HINT}") from None
    return plt


def _colour(verdict: Verdict) -> str:
    if not verdict.significant:
        return SAME
    return FASTER if verdict.speedup >= 1.0 else SLOWER


def _title(result: BenchResult) -> str:
    env = result.environment
    sizes = result.batch_sizes
    batch = f"batch {sizes[0]}" if len(sizes) == 1 else f"batch sizes {', '.join(map(str, sizes))}"
    machine = ", ".join(p for p in (f"{env.get('cpu')} ({env.get('cpu_count')} CPUs)" if env.get("cpu") else "",
                                    env.get("gpu") or "") if p)
    return f"{result.model} ({result.precision}), {batch}: folded vs unfolded\n{machine}"


def _speedup_panel(ax: Any, verdicts: Sequence[Verdict]) -> None:
    """One point per configuration at the median per-round speed-up, its IQR as the interval, and the 1.0 line."""
    for y, v in enumerate(verdicts):
        colour = _colour(v)
        ax.errorbar([v.speedup], [y], xerr=[[v.speedup - v.iqr[0]], [v.iqr[1] - v.speedup]], fmt="o", ms=8,
                    color=colour, elinewidth=3, capsize=5)
        ax.annotate(ratio_text(v.speedup), (v.iqr[1], y), xytext=(6, 0), textcoords="offset points", va="center",
                    color=colour, fontsize=FONT_SIZE - 1)
    ax.axvline(1.0, color="black", lw=1.2, ls="--")
    lo = min([1.0, *(v.iqr[0] for v in verdicts)])
    hi = max([1.0, *(v.iqr[1] for v in verdicts)])
    if hi / max(lo, 1e-6) > 2.5:  # ratios far from 1: a log scale keeps 0.5x and 2x equally far from 1.0
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.2, hi * 1.6)
        _plain_log_ticks(ax.xaxis)
    else:
        pad = max(hi - lo, 0.1) * 0.25
        ax.set_xlim(lo - pad, hi + pad * 1.6)
    ax.set_xlabel("speed-up of folding (median per-round\nunfolded/folded, bar: IQR; 1.0 = no change)")
    ax.grid(axis="x", alpha=0.3)


def _latency_panel(ax: Any, pairs: Sequence[tuple[BenchRow, BenchRow]]) -> None:
    """Each variant's samples on one shared scale: min to p99 as a line, p25-p75 as a bar, p50/p90/p99 marked."""
    samples_of = [np.asarray(r.samples_ms or [r.latency.p50_ms]) for pair in pairs for r in pair]
    for y, pair in enumerate(pairs):
        for offset, row in zip((-0.18, 0.18), pair):
            samples = np.asarray(row.samples_ms or [row.latency.p50_ms])
            q = np.percentile(samples, [25, 50, 75, 90, 99])
            colour = VARIANT_COLOURS[row.variant]
            ax.plot([samples.min(), q[4]], [y + offset] * 2, color=colour, lw=1.2)
            ax.plot([q[0], q[2]], [y + offset] * 2, color=colour, lw=7, alpha=0.45, solid_capstyle="butt")
            for _, pct, marker in PERCENTILE_MARKERS:
                ax.plot([np.percentile(samples, pct)], [y + offset], marker=marker, color=colour, ms=6,
                        mec="black", mew=0.6, ls="none")
            ax.annotate(f"p50 {q[1]:.3g} ms", (q[4], y + offset), xytext=(6, 0), textcoords="offset points",
                        va="center", fontsize=FONT_SIZE - 2, color=colour)
    low = max(min(float(s.min()) for s in samples_of), 1e-6)
    high = max(float(np.percentile(s, 99)) for s in samples_of)  # the lines end at p99
    if high / low > 20:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.3, high * 1.9)
        _plain_log_ticks(ax.xaxis)
    else:
        ax.set_xlim(0, high * 1.3)
    ax.set_xlabel("latency per run (ms), one scale for all rows")
    ax.grid(axis="x", alpha=0.3, which="both")
    handles = [ax.plot([], [], color=c, lw=7, alpha=0.45, label=v)[0] for v, c in VARIANT_COLOURS.items()]
    handles += [ax.plot([], [], marker=m, color="white", mec="black", ls="none", label=name)[0]
                for name, _, m in PERCENTILE_MARKERS]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=FONT_SIZE - 2, ncol=5,
              frameon=False, title="bar: p25-p75, line: fastest run to p99", title_fontsize=FONT_SIZE - 2)


def _plain_log_ticks(axis: Any) -> None:
    """Log-scale ticks at 1, 2, 5 times powers of ten, written as plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _sweep_panels(axes: Sequence[Any], rows: Sequence[BenchRow]) -> None:
    """Throughput and p50 latency against the batch size, one colour per configuration, folded solid and
    unfolded dashed."""
    series: dict[tuple[str, str, str], dict[str, list[BenchRow]]] = {}
    for row in rows:
        series.setdefault((row.backend, row.config, row.precision), {}).setdefault(row.variant, []).append(row)
    colours = [f"C{i % 10}" for i in range(len(series))]
    for (key, variants), colour in zip(series.items(), colours):
        for variant, style in (("folded", "-"), ("unfolded", "--")):
            points = sorted(variants.get(variant, []), key=lambda r: r.batch_size)
            batches = [r.batch_size for r in points]
            label = " ".join(p for p in key if p) if variant == "folded" else None
            axes[0].plot(batches, [r.throughput for r in points], style, marker="o", color=colour, label=label)
            axes[1].plot(batches, [r.latency.p50_ms for r in points], style, marker="o", color=colour)
    sizes = sorted({r.batch_size for r in rows})
    for ax, title in zip(axes, ("throughput (samples/s) by batch size", "p50 latency (ms) by batch size")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel("batch size")
        ax.set_title(title, fontsize=FONT_SIZE)
        ax.grid(alpha=0.3, which="both")
    axes[0].figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(series), 3),
                          fontsize=FONT_SIZE - 2, frameon=False, title="solid: folded, dashed: unfolded",
                          title_fontsize=FONT_SIZE - 2)


def bench_figure(result: BenchResult) -> Any:
    """The matplotlib Figure of `result` (see the module docstring); the caller closes it."""
    plt = _pyplot()
    verdicts = result.verdicts
    folded = [r for r in result.rows if r.variant == "folded"]
    by_key = {(r.backend, r.config, r.precision, r.batch_size): r for r in result.rows if r.variant == "unfolded"}
    pairs = [(by_key[(r.backend, r.config, r.precision, r.batch_size)], r) for r in folded]
    sweep = len(result.batch_sizes) > 1
    panel_h = max(2.0, 0.62 * len(verdicts))
    head_h = 1.35 + 0.24 * len(verdicts)  # title, verdict lines, the latency legend
    sweep_h, gap_h = (3.2, 1.25) if sweep else (0.0, 0.0)
    bottom_h = 0.95 + (0.45 + 0.2 * len({(r.backend, r.config, r.precision) for r in folded}) / 3 if sweep else 0)
    height = head_h + panel_h + gap_h + sweep_h + bottom_h
    with plt.rc_context({"font.size": FONT_SIZE}):
        fig = plt.figure(figsize=(WIDTH_IN, height), dpi=DPI)
        top = fig.add_gridspec(1, 2, width_ratios=(1, 1.5), wspace=0.06, top=1 - head_h / height,
                               bottom=(bottom_h + sweep_h + gap_h) / height, left=LABELS_IN / WIDTH_IN, right=0.97)
        speed = fig.add_subplot(top[0])
        latency = fig.add_subplot(top[1], sharey=speed)
        _speedup_panel(speed, verdicts)
        _latency_panel(latency, pairs)
        speed.set_yticks(range(len(verdicts)), [_config_label(v, r) for v, r in zip(verdicts, folded)],
                         fontsize=FONT_SIZE - 1)
        speed.set_ylim(len(verdicts) - 0.5, -0.5)
        latency.tick_params(labelleft=False)
        if sweep:
            below = fig.add_gridspec(1, 2, wspace=0.18, top=(bottom_h + sweep_h) / height, bottom=bottom_h / height,
                                     left=0.08, right=0.97)
            _sweep_panels([fig.add_subplot(below[0]), fig.add_subplot(below[1])], result.rows)
        fig.text(0.5, 1 - 0.12 / height, _title(result), ha="center", va="top", fontsize=FONT_SIZE + 2,
                 weight="bold")
        for i, v in enumerate(verdicts):
            fig.text(0.5, 1 - (0.72 + 0.24 * i) / height, ("folding: " if i == 0 else "") + v.text(),
                     ha="center", va="top", fontsize=FONT_SIZE - 1, color=_colour(v))
    return fig


def _config_label(verdict: Verdict, row: BenchRow) -> str:
    config = f"{verdict.backend} {verdict.config}".strip()
    return f"{config}\n{row.precision}, batch {row.batch_size}, max rel err {row.max_rel:.1g}"


def plot_bench(result: BenchResult, path: str | os.PathLike[str]) -> Path:
    """Write the figure of `result` to `path` (PNG, written atomically)."""
    plt = _pyplot()
    fig = bench_figure(result)
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return target
