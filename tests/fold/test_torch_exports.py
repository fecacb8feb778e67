"""Real exports of a small mixed-norm module (dynamo unoptimized and legacy): what the engine must handle.

Dynamo writes `Expand(Shape(W))` zero biases and name-scope metadata; legacy records no intermediate shapes
(the bias-free Linear's MatMul rank is proved by shape inference) and routes shared tensors via Identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import assert_close, run_ort

from foldnorm import fold_model

torch = pytest.importorskip("torch")
nn = torch.nn


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.t, self.b2 = nn.ConvTranspose2d(8, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(6)
        self.gn, self.ln = nn.GroupNorm(2, 6), nn.LayerNorm(6)
        self.inorm = nn.InstanceNorm2d(6, track_running_stats=True, affine=True)
        self.fc, self.b3 = nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        h = self.inorm(self.gn(self.b2(self.t(h)))).mean((2, 3))
        return self.b3(self.fc(self.ln(h)))


def randomized() -> nn.Module:
    torch.manual_seed(0)
    module = Mixed()
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.3)
    return module.eval()


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_real_export_folds_every_batchnorm(exporter: str, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "m.onnx"
    if exporter == "dynamo":
        torch.onnx.export(randomized(), (x,), str(path), dynamo=True, optimize=False)
    else:
        torch.onnx.export(randomized(), (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          training=torch.onnx.TrainingMode.PRESERVE)
    result = fold_model(path)
    outcomes = sorted((r.module, r.outcome) for r in result.report.records)
    assert outcomes == [("b1", "folded"), ("b2", "folded"), ("b3", "folded"), ("gn", "kept"), ("inorm", "kept"),
                        ("ln", "kept")]
    onnx.checker.check_model(result.model, full_check=True)
    model = onnx.load(str(path))
    feeds = {model.graph.input[0].name: np.random.default_rng(0).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)}
    assert_close(run_ort(model, feeds), run_ort(result.model, feeds), rtol=1e-5)
