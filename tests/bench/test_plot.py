"""The plot answers the question (issue 15 #6): speed-ups with their IQR on one axis with the 1.0 line, latencies on
one shared scale with p50/p90/p99, a title with model, batch, machine and verdict; throughput and latency against
the batch size for a sweep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from foldnorm.bench.runner import benchmark

matplotlib = pytest.importorskip("matplotlib")

from foldnorm.bench.plot import bench_figure, plot_bench  # noqa: E402


def _texts(fig: object) -> list[str]:
    return [t.get_text() for t in fig.texts]  # type: ignore[attr-defined]


def test_one_figure_answers_does_folding_help(model_path: str, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    result = benchmark(model_path, warmup=0, iterations=5)
    fig = bench_figure(result)
    try:
        speed, latency = fig.axes
        assert latency.get_shared_y_axes().joined(speed, latency)
        assert any(list(line.get_xdata()) == [1.0, 1.0] for line in speed.lines), "the 1.0 line"
        points = [c for c in speed.containers]  # one errorbar per configuration, top to bottom
        row_of = {v.where: y for y, v in enumerate(result.verdicts)}
        assert len(points) == len(result.verdicts) == 2
        for container, verdict in zip(points, result.verdicts):
            (x,), (y,) = container.lines[0].get_data()
            assert (x, y) == (pytest.approx(verdict.speedup), row_of[verdict.where])
            low, high = verdict.iqr
            segment = container.lines[2][0].get_segments()[0]
            assert [p[0] for p in segment] == pytest.approx([low, high])
        lo, hi = speed.get_xlim()
        assert lo < min(1.0, *(v.iqr[0] for v in result.verdicts)) and hi > max(1.0, *(v.iqr[1] for v in
                                                                                       result.verdicts))
        ticks = [t.get_text() for t in speed.get_yticklabels()]
        assert ticks[0].startswith("ort-cpu opt=disabled\nfp32, batch 1, max rel err")
        # every row's samples on the one latency axis: p99 of each variant inside its limits
        left, right = latency.get_xlim()
        for row in result.rows:
            assert left <= min(row.samples_ms) and np.percentile(row.samples_ms, 99) <= right
        legend = [t.get_text() for t in latency.get_legend().get_texts()]
        assert legend == ["unfolded", "folded", "p50", "p90", "p99"]
        texts = _texts(fig)
        assert texts[0].startswith(f"{model_path} (fp32), batch 1: folded vs unfolded\n{result.environment['cpu']}")
        assert texts[1] == "folding: " + result.verdicts[0].text() and texts[2] == result.verdicts[1].text()
        assert all(t.get_fontsize() >= 9 for t in fig.texts)
    finally:
        plt.close(fig)
    png = plot_bench(result, tmp_path / "bench.png")
    image = matplotlib.image.imread(png)
    assert image.shape[1] == 1100 and 300 < image.shape[0] < 1100


def test_a_sweep_adds_throughput_and_latency_against_batch(model_path: str) -> None:
    import matplotlib.pyplot as plt

    result = benchmark(model_path, batch_size=[1, 2, 4], ort_opt=["all"], warmup=0, iterations=3)
    fig = bench_figure(result)
    try:
        speed, _latency, throughput, p50 = fig.axes
        assert [t.get_text().split("\n")[1].split(",")[1] for t in speed.get_yticklabels()] == [
            " batch 1", " batch 2", " batch 4"]
        folded, unfolded = throughput.lines
        assert list(folded.get_xdata()) == [1, 2, 4] and folded.get_linestyle() == "-"
        assert unfolded.get_linestyle() == "--"
        rows = [r for r in result.rows if r.variant == "folded"]
        assert list(folded.get_ydata()) == pytest.approx([r.throughput for r in rows])
        assert list(p50.lines[0].get_ydata()) == pytest.approx([r.latency.p50_ms for r in rows])
        assert "batch sizes 1, 2, 4" in _texts(fig)[0]
    finally:
        plt.close(fig)
