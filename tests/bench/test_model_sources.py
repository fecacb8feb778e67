"""What `benchmark` accepts as a model: an nn.Module with example inputs (issue 15 #4), PyTorch models with several
inputs (#2: the zoo's two-input-bn end to end, several --input-shape), an fp16 module (#3), a ModelProto."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.bench_models import conv_bn_onnx, tiny

import foldnorm
from foldnorm.errors import InputSpecError

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # exports PyTorch modules


def _check_rows(result: foldnorm.BenchResult, backends: set[str], rtol: float = 1e-5) -> None:
    assert {r.backend for r in result.rows} == backends and result.verify.ok
    for row in result.rows:
        assert row.nonfinite == 0 and row.max_rel < rtol, row


def test_a_module_with_example_inputs() -> None:
    module = tiny()
    result = foldnorm.benchmark(module, example_inputs=[torch.randn(1, 3, 16, 16)], backends=["torch"], warmup=0,
                                iterations=2)
    assert result.model == "Sequential" and [r.config for r in result.rows] == ["device=cpu", "device=cpu"]
    _check_rows(result, {"torch"})
    assert result.torch_fold_report is not None and result.torch_fold_report.folded == 2
    assert module.training is False and sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()) == 2
    with pytest.raises(InputSpecError, match="example_inputs="):
        foldnorm.benchmark(module, backends=["torch"])


def test_the_two_input_zoo_model_end_to_end() -> None:
    result = foldnorm.benchmark("two-input-bn", backends=["ort-cpu", "torch"], batch_size=[1, 3], warmup=0,
                                iterations=2)
    _check_rows(result, {"ort-cpu", "torch"})
    assert result.batchnorm_folded == 3 and result.fold_report.batchnorm_total == 3
    assert result.torch_fold_report is not None and result.torch_fold_report.folded == 3
    assert {(r.backend, r.batch_size) for r in result.rows} == {(b, n) for b in ("ort-cpu", "torch") for n in (1, 3)}


def test_several_input_shapes_export_a_multi_input_module() -> None:
    out = CliRunner().invoke(cli, ["bench", "two-input-bn", "--input-shape", "1x3x20x20", "--input-shape", "1x6",
                                   "--backend", "torch", "--backend", "ort-cpu", "--ort-opt", "all",
                                   "--warmup", "0", "--iterations", "2", "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [r["backend"] for r in data["rows"]] == ["torch", "torch", "ort-cpu", "ort-cpu"]  # in the order asked
    assert all(r["max_rel"] < 1e-5 for r in data["rows"])
    result = foldnorm.benchmark("two-input-bn", input_shapes={"pixels": (1, 3, 8, 8), "extra": (1, 6)},
                                ort_opt=["disabled"], warmup=0, iterations=2)
    assert result.verify.ok and len(result.rows) == 2  # the names became the exported inputs' names


def test_an_fp16_module_gives_fp16_rows() -> None:
    module = tiny().half()
    result = foldnorm.benchmark(module, example_inputs=[torch.randn(1, 3, 16, 16).half()],
                                backends=["ort-cpu", "torch"], ort_opt=["disabled"], warmup=0, iterations=2)
    assert result.precision == "fp16" and {r.precision for r in result.rows} == {"fp16"}
    _check_rows(result, {"ort-cpu", "torch"}, rtol=1e-2)


def test_a_model_proto(rng: np.random.Generator) -> None:
    model = conv_bn_onnx(rng)
    result = foldnorm.benchmark(model, ort_opt=["disabled"], warmup=0, iterations=2)
    assert result.model == "model" and result.batchnorm_folded == 1
    _check_rows(result, {"ort-cpu"})
    assert len(model.graph.node) == 2, "the caller's model is not changed"
