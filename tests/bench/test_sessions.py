"""Sessions are context managers, and export, verify and bench close every session they open, also when a run
raises. Every OrtSession/TorchSession made during a test is recorded (the real classes, on real ONNX Runtime
and torch); the tests then check that each one ended closed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from support.bench_models import conv_bn_onnx
from support.builders import parse

import foldnorm
from foldnorm.bench.backends import get_backend
from foldnorm.bench.backends.base import Session
from foldnorm.bench.backends.ort_cpu import OrtOptions, OrtSession
from foldnorm.bench.backends.torch_eager import TorchOptions, TorchSession
from foldnorm.bench.progress import Step
from foldnorm.errors import InputSpecError


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Session]:
    """Every session constructed while the test runs, in order."""
    sessions: list[Session] = []
    for cls in (OrtSession, TorchSession):
        def recording_init(self: Session, *args: object, _init: Callable[..., None] = cls.__init__,
                           **kwargs: object) -> None:
            _init(self, *args, **kwargs)
            sessions.append(self)

        monkeypatch.setattr(cls, "__init__", recording_init)
    return sessions


class Stop(Exception):
    """Raised by a test from inside a library call."""


def test_ort_session_closes_on_leaving_the_block_also_when_a_run_raises(model_path: str,
                                                                        opened: list[Session]) -> None:
    backend = get_backend("ort-cpu")
    x = np.random.default_rng(0).normal(size=(2, 4, 8, 8)).astype(np.float32)
    with backend.open(model_path, OrtOptions(opt="all")) as session:
        assert not session.closed
        (y,) = session.run({"x": x})
        assert y.shape == (2, 6, 8, 8) and np.all(np.isfinite(y))
    assert session.closed
    with pytest.raises(Exception, match="x") as raised, backend.open(model_path, OrtOptions()) as failing:
        failing.run({"x": x[:, :3]})  # ONNX Runtime refuses 3 channels where the Conv wants 4
    assert type(raised.value).__module__.startswith("onnxruntime")
    assert failing.closed
    failing.close()  # closing twice is harmless
    assert opened == [session, failing]


def test_torch_session_closes(opened: list[Session]) -> None:
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with get_backend("torch").open(module, TorchOptions(threads=1)) as session:
        (y,) = session.run({"x": np.ones((4, 3), np.float32)})
        assert y.shape == (4, 2)
    assert session.closed and opened == [session]


def _export_module(fail_at_batch: int | None) -> torch.nn.Module:
    """Conv + BN with random statistics; raises (in plain Python, as user code may) for one concrete batch."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
            with torch.no_grad():
                self.bn.running_mean.normal_(0, 0.8)
                self.bn.running_var.uniform_(0.2, 3.0)
                self.bn.weight.uniform_(0.3, 2.0)
                self.bn.bias.normal_(0, 0.7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if isinstance(x.shape[0], int) and x.shape[0] == fail_at_batch:  # a SymInt while exporting
                raise Stop(f"batch {fail_at_batch}")
            return self.bn(self.conv(x))

    return Net().eval()


def test_export_closes_its_check_session_also_when_the_module_raises(tmp_path: Path, opened: list[Session]) -> None:
    example = [torch.randn(1, 3, 8, 8)]
    result = foldnorm.export_onnx(_export_module(None), example, tmp_path / "ok.onnx")
    assert result.ok and [c.batch_size for c in result.checks] == [1, 2]
    assert len(opened) == 1 and opened[0].closed
    with pytest.raises(Stop, match="batch 2"):  # the check runs batch 1 on ORT, then calls the module at batch 2
        foldnorm.export_onnx(_export_module(2), example, tmp_path / "raises.onnx")
    assert len(opened) == 2 and opened[1].closed


def test_verify_closes_both_sessions_also_when_ort_cannot_run_the_model(tmp_path: Path, rng: np.random.Generator,
                                                                         opened: list[Session]) -> None:
    ok = conv_bn_onnx(rng)
    assert foldnorm.compare_models(ok, foldnorm.fold_model(ok).model).ok
    assert len(opened) == 2 and all(s.closed for s in opened)
    # valid for the checker, but ONNX Runtime cannot reshape 4*N values into 3 columns at batch 1
    bad = parse("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N, 4] x) => (float[M, 3] y) {
        shape = Constant <value = int64[2] {-1, 3}> ()
        y = Reshape (x, shape)
    }
    """)
    with pytest.raises(InputSpecError, match="ONNX Runtime cannot run the reference"):
        foldnorm.compare_models(bad, bad, batch_sizes=[1])
    assert len(opened) == 3 and all(s.closed for s in opened)


@pytest.mark.parametrize(("stop_at", "sessions"), [
    ("config 1 of 1: opening ort-cpu opt=disabled fp32 batch 1: folded", 4),  # verify's two, the reference, unfolded
    ("config 1 of 1: timing ort-cpu opt=disabled fp32 batch 1", 5),  # ... and the folded variant
    (None, 5),
])
def test_bench_closes_every_session_also_when_interrupted(model_path: str, opened: list[Session],
                                                          stop_at: str | None, sessions: int) -> None:
    def progress(step: Step) -> None:
        if step.message == stop_at:
            raise Stop(step.message)

    def bench() -> foldnorm.BenchResult:
        return foldnorm.benchmark(model_path, ort_opt=["disabled"], warmup=0, iterations=2, progress=progress)

    if stop_at is None:
        assert [r.variant for r in bench().rows] == ["unfolded", "folded"]
    else:
        with pytest.raises(Stop):
            bench()
    assert len(opened) == sessions and all(s.closed for s in opened)
