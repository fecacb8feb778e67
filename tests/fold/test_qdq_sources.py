"""Real quantized models: ONNX Runtime's quantize_static (QDQ) on unfolded zoo exports, and PyTorch fake-quant
(QAT) modules exported with Q/DQ nodes. Every BatchNorm that folds in the float model folds in the QDQ model or
is refused with a reason, and the folded QDQ model stays within the quantization error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from foldnorm.models import get_spec
from support.builders import run_ort
from torch import nn

from foldnorm import compare_models, export_onnx, fold_model
from foldnorm.bench.int8 import quantize_qdq
from foldnorm.onnxgraph.inputs import make_feeds

pytestmark = pytest.mark.slow  # exports and quantizes real PyTorch models


def ort_quantized(name: str, tmp: Path, per_channel: bool = True) -> tuple[Path, Path]:
    """The built-in model `name` exported unfolded, and its QDQ model from ONNX Runtime's quantizer."""
    torch.manual_seed(0)  # the weights: the same draw whatever ran before (mlp-bn1d misses 4 steps at seeds 7, 9)
    spec = get_spec(name)
    float_path = tmp / f"{name}.onnx"
    export_onnx(spec.build(), spec.example_inputs(), float_path)
    model = onnx.load(float_path)
    calibration = [make_feeds(model, 2, 10 + k) for k in range(8)]
    return float_path, quantize_qdq(float_path, tmp / f"{name}.int8.onnx", calibration, per_channel=per_channel)


def outcomes(path: Path | onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """(outcome, reason) of each BatchNorm and affine-tail record, by source module."""
    report = fold_model(path).report
    return {r.module or r.node: (r.outcome, r.reason) for r in report.records if r.kind in ("batchnorm", "affine")}


# (model, per-channel weights, how many of the BNs folded in the float model are refused in the QDQ model, why)
SOURCES = [
    ("resnet-bn", True, 0, ""), ("mobilenet-bn", True, 0, ""), ("mlp-bn1d", True, 0, ""),
    ("conv1d-bn", True, 0, ""), ("frozen-bn", True, 0, ""),
    # the BN before the 1x1 Conv follows an Add (bn-conv in the float model); in the QDQ model a Q/DQ pair
    # stands between the BN and the Conv
    ("preact-bn", True, 1, "its input comes from Add"),
    # the quantizer fails on grouped ConvTranspose per channel; per tensor, groups 2 and 4 mix output channels
    # across the weight's axes: no per-channel scale gives the fold
    ("decoder-bn", False, 2, "more than a per-output-channel scale"),
]


@pytest.mark.parametrize(("name", "per_channel", "refused", "why"), SOURCES, ids=[s[0] for s in SOURCES])
def test_every_bn_the_float_model_folds_folds_or_is_refused_with_a_reason(
        tmp_path: Path, name: str, per_channel: bool, refused: int, why: str) -> None:
    float_path, qdq_path = ort_quantized(name, tmp_path, per_channel)
    in_float, in_qdq = outcomes(float_path), outcomes(qdq_path)
    folded = [k for k, (outcome, _) in in_float.items() if outcome == "folded"]
    assert folded
    not_folded = [in_qdq[k] for k in folded if in_qdq[k][0] != "folded"]
    assert len(not_folded) == refused, in_qdq
    assert all(outcome == "skipped" and why in reason for outcome, reason in not_folded), not_folded
    check = compare_models(qdq_path, fold_model(qdq_path).model, batch_sizes=(1, 4), samples=2)
    assert check.ok, check.details()


def test_resnet_int8_error_against_fp32_stays_that_of_the_unfolded_qdq_model(tmp_path: Path) -> None:
    float_path, qdq_path = ort_quantized("resnet-bn", tmp_path)
    folded = fold_model(qdq_path)
    assert folded.report.batchnorm_folded == 9 and folded.report.quantization_counts() == {"moved": 9}
    rng = np.random.default_rng(5)
    errors: dict[str, list[float]] = {"unfolded": [], "folded": []}
    for _ in range(6):
        feeds = {"input": rng.normal(0, 1, (4, 3, 224, 224)).astype(np.float32)}
        (fp32,) = run_ort(onnx.load(float_path), feeds)
        for variant, model in (("unfolded", onnx.load(qdq_path)), ("folded", folded.model)):
            (out,) = run_ort(model, feeds)
            errors[variant].append(float(np.abs(out - fp32).max() / np.abs(fp32).max()))
    assert np.mean(errors["folded"]) <= 1.5 * np.mean(errors["unfolded"]), errors


class FakeQuantConvBN(nn.Module):
    """QAT-style: per-tensor fake-quant input, per-channel fake-quant Conv weight (scales as buffers), BN,
    ReLU, a fake-quant output. `full_range` lets a weight reach -128 (PyTorch's default quant_min)."""

    def __init__(self, full_range: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        peak = self.conv.weight.detach().abs().amax(dim=(1, 2, 3))
        self.register_buffer("w_scale", peak / (127.5 if full_range else 127.0))
        self.register_buffer("w_zero", torch.zeros(8, dtype=torch.int32))
        with torch.no_grad():
            self.bn.weight.copy_(torch.linspace(-1.5, 1.5, 8))  # negative scales: rows of W_q are negated
            self.bn.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """fq(relu(bn(conv(fq(x), fq_per_channel(W)))))."""
        x = torch.fake_quantize_per_tensor_affine(x, 0.03, 0, -128, 127)
        w = torch.fake_quantize_per_channel_affine(self.conv.weight, self.w_scale, self.w_zero, 0, -128, 127)
        y = torch.relu(self.bn(nn.functional.conv2d(x, w, None, 1, 1)))
        return torch.fake_quantize_per_tensor_affine(y, 0.05, -128, -128, 127)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_fake_quant_export_folds_exactly(tmp_path: Path, exporter: str) -> None:
    torch.manual_seed(0)
    module = FakeQuantConvBN().eval()
    path = tmp_path / "qat.onnx"
    # torch.export cannot make the batch of fake-quant ops dynamic: both exports are static
    export_onnx(module, [torch.randn(1, 3, 8, 8)], path, exporter=exporter, opset=18,  # type: ignore[arg-type]
                dynamic_batch=False)
    result = fold_model(path)
    (record,) = result.report.by_kind("batchnorm")
    assert (record.outcome, record.quantization) == ("folded", "exact"), record.reason
    assert "4 channel(s) negated" in record.reason
    assert any(n.op_type == "QuantizeLinear" and n.input[0] in {t.name for t in result.model.graph.initializer}
               for n in result.model.graph.node), "the weight keeps its QAT form: QuantizeLinear of a float tensor"
    check = compare_models(path, result.model, batch_sizes=(1,), samples=4)
    assert check.ok and check.max_abs <= check.outputs[0].quant_step, check.details()  # a flip at most


def test_a_fake_quant_weight_at_minus_128_is_refused_unless_requantized(tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = FakeQuantConvBN(full_range=True).eval()
    path = tmp_path / "qat.onnx"
    export_onnx(module, [torch.randn(1, 3, 8, 8)], path, exporter="legacy", opset=13)
    w = module.conv.weight.detach()
    negative = module.bn.weight.detach() < 0
    at_min = (torch.round(w / module.w_scale.view(-1, 1, 1, 1)) <= -128).flatten(1).any(dim=1)
    assert bool((negative & at_min).any()), "the fixture needs a -128 in a channel with a negative BN scale"
    (record,) = fold_model(path).report.by_kind("batchnorm")
    assert record.outcome == "skipped" and "whose negation is outside int8" in record.reason
    from foldnorm import FoldOptions

    (record,) = fold_model(path, options=FoldOptions(requantize=True)).report.by_kind("batchnorm")
    assert (record.outcome, record.quantization) == ("folded", "requantized")
