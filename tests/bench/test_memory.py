"""Memory per session on process-wide counters. The counters here are Python's own allocation tracer
(tracemalloc, which sees numpy's buffers), as real as torch's CUDA counters and just as process-wide; the
`gpu` test measures torch's CUDA rows."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest

from foldnorm.bench.backends.memory import PeakMeter
from foldnorm.bench.runner import benchmark

MB = 1 << 20


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def _meter() -> PeakMeter:
    return PeakMeter(lambda: tracemalloc.get_traced_memory()[0], tracemalloc.reset_peak,
                     lambda: tracemalloc.get_traced_memory()[1])


def _run(scratch_mb: int) -> float:
    return float(np.ones(scratch_mb * MB, np.uint8).sum())  # the scratch buffer is freed when the run ends


@pytest.mark.usefixtures("traced")
def test_two_open_sessions_each_report_their_own_memory() -> None:
    small, big = _meter(), _meter()
    kept_small = small.keeping(lambda: np.zeros(1 * MB, np.uint8))
    kept_big = big.keeping(lambda: np.zeros(3 * MB, np.uint8))  # both "modules" stay allocated, as both variants do
    for _ in range(2):
        small.running(lambda: _run(2))
        big.running(lambda: _run(5))
    assert kept_small.nbytes + kept_big.nbytes == 4 * MB
    assert small.bytes() == pytest.approx(3 * MB, rel=0.05)  # 1 MB held + 2 MB during its runs
    assert big.bytes() == pytest.approx(8 * MB, rel=0.05)  # a process-wide peak would give both 9 MB


@pytest.mark.gpu
def test_gpu_torch_rows_report_different_memory_for_unfolded_and_folded() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    result = benchmark("support.bench_models:tiny", backends=["torch"], input_shape=(1, 3, 16, 16),
                       precisions=["fp32"], warmup=1, iterations=3)
    unfolded, folded = (r for r in result.rows if r.config.startswith("device=cuda"))
    assert unfolded.peak_mem_mb is not None and folded.peak_mem_mb is not None
    assert folded.peak_mem_mb < unfolded.peak_mem_mb, "the folded module holds no BatchNorm tensors"
