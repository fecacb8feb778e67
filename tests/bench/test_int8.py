"""int8 rows: `benchmark(precisions=(..., "int8"))` quantizes a float model with ONNX Runtime and folds it again;
a QDQ model gives int8 rows only. Everything runs for real on ONNX Runtime CPU."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli

from foldnorm.bench.int8 import quantize_qdq
from foldnorm.bench.runner import benchmark
from foldnorm.errors import FoldnormError
from foldnorm.onnxgraph.inputs import make_feeds
from foldnorm.verify.quantized import is_quantized


def quantized_copy(model_path: str, tmp_path: Path) -> Path:
    model = onnx.load(model_path)
    return quantize_qdq(model_path, tmp_path / "int8.onnx", [make_feeds(model, 2, k) for k in range(4)])


def test_the_quantizer_keeps_the_bn_between_q_dq_pairs(model_path: str, tmp_path: Path) -> None:
    qdq = onnx.load(quantized_copy(model_path, tmp_path))
    ops = [n.op_type for n in qdq.graph.node]
    assert "BatchNormalization" in ops and "QuantizeLinear" in ops and is_quantized(qdq)
    assert not is_quantized(onnx.load(model_path))


def test_fp32_and_int8_rows(model_path: str) -> None:
    result = benchmark(model_path, precisions=("fp32", "int8"), ort_opt=("disabled",), warmup=1, iterations=3)
    assert [(r.precision, r.variant) for r in result.rows] == [
        ("fp32", "unfolded"), ("fp32", "folded"), ("int8", "unfolded"), ("int8", "folded")]
    unfolded, folded = result.rows[2:]
    assert 0 < unfolded.max_rel < 0.25 and 0 < folded.max_rel < 0.25  # int8 error, against the fp32 model
    assert result.int8 is not None and result.int8.verify.ok
    assert result.int8.fold_report.quantization_counts() == {"moved": 1}
    assert result.fold_report_for(folded) is result.int8.fold_report
    assert any(n.startswith("int8 rows: ONNX Runtime quantize_static") for n in result.notes)


def test_int8_alone_times_no_fp32_rows(model_path: str) -> None:
    result = benchmark(model_path, precisions=("int8",), ort_opt=("all",), warmup=1, iterations=2)
    assert {r.precision for r in result.rows} == {"int8"} and len(result.rows) == 2


def test_a_qdq_model_gives_int8_rows_against_itself(model_path: str, tmp_path: Path) -> None:
    qdq = quantized_copy(model_path, tmp_path)
    result = benchmark(str(qdq), ort_opt=("disabled",), warmup=1, iterations=2)
    assert [(r.precision, r.variant) for r in result.rows] == [("int8", "unfolded"), ("int8", "folded")]
    assert result.rows[0].max_abs == 0 and result.int8 is None and result.verify.ok
    assert result.verify.outputs[0].quant_step is not None, "compared in quantization steps"


def test_cli_precision_int8(model_path: str) -> None:
    out = CliRunner().invoke(cli, ["bench", model_path, "--precision", "int8", "--ort-opt", "disabled",
                                   "--warmup", "1", "--iterations", "2"])
    assert out.exit_code == 0, out.output
    assert "int8" in out.output and "note: int8 fold: 1/1 BatchNorm folded" in out.output


def test_a_model_the_quantizer_cannot_take_is_a_user_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FoldnormError, match="ONNX Runtime's quantizer cannot quantize it"):
        quantize_qdq(bad, tmp_path / "out.onnx", [])
