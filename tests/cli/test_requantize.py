"""`--requantize` on `fold` and `inspect`: quantized weights that cannot take a fold exactly are refused
without it and requantized with it; the JSON record says which; a folded QDQ model verifies in output steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.qdq_builders import qdq_conv_bn


@pytest.fixture
def per_tensor(tmp_path: Path, rng: np.random.Generator) -> Path:
    """DequantizeLinear-10 weights with one scale: a per-channel BN scale needs requantizing."""
    path = tmp_path / "m.onnx"
    onnx.save(qdq_conv_bn(rng, pair=False, io_pairs=False, per_channel=False, opset=10), path)
    return path


@pytest.mark.parametrize("command", ["fold", "inspect"])
def test_requantize_turns_a_refusal_into_a_requantized_fold(per_tensor: Path, tmp_path: Path, command: str) -> None:
    output = ["-o", str(tmp_path / "o.onnx")] if command == "fold" else []
    args = [command, str(per_tensor), "--format", "json", *output]
    without = CliRunner().invoke(cli, args)
    assert without.exit_code == 0, without.output
    (record,) = json.loads(without.stdout)["report"]["records"]
    assert record["outcome"] == "skipped" and "--requantize" in record["reason"]
    with_it = CliRunner().invoke(cli, [*args, "--requantize"])
    assert with_it.exit_code == 0, with_it.output
    (record,) = json.loads(with_it.stdout)["report"]["records"]
    assert (record["outcome"], record["quantization"]) == ("folded", "requantized")


def test_fold_of_a_qdq_model_verifies_in_output_steps(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "q.onnx"
    onnx.save(qdq_conv_bn(rng, bias="int32"), path)
    out = CliRunner().invoke(cli, ["fold", str(path), "-o", str(tmp_path / "f.onnx"), "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["report"]["quantization"] == {"moved": 1}
    (output,) = data["verify"]["outputs"]
    assert output["quant_step"] == pytest.approx(0.4) and output["atol"] == pytest.approx(1.6)
