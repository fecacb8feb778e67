"""The skeleton's commands through click's CliRunner: output, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import conv_bn, op_count


@pytest.fixture
def conv_bn_file(tmp_path: Path, rng: np.random.Generator) -> Path:
    model = conv_bn(rng, cin=3, spatial=(16, 16), bn_out="b", tail=["y = Relu (b)"])
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "foldnorm" in result.output


@pytest.mark.parametrize("command", ["export", "fold", "inspect", "verify", "bench", "models"])
def test_subcommand_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_fold_writes_output_and_report(conv_bn_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "folded.onnx"
    report = tmp_path / "report.json"
    original = conv_bn_file.read_bytes()
    result = CliRunner().invoke(cli, ["fold", str(conv_bn_file), "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "1/1 BatchNorm folded" in result.output
    assert op_count(onnx.load(out), "BatchNormalization") == 0
    assert conv_bn_file.read_bytes() == original
    data = json.loads(report.read_text())
    assert data["records"][0]["outcome"] == "folded"


def test_fold_directory_writes_its_report(conv_bn_file: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.onnx").write_bytes(conv_bn_file.read_bytes())
    (models / "bad.onnx").write_bytes(b"not onnx")
    (tmp_path / "out").mkdir()
    report = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["fold", str(models), "-o", str(tmp_path / "out"), "--report", str(report)])
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    assert [(Path(i["input"]).name, i["ok"]) for i in data["items"]] == [("a.onnx", True), ("bad.onnx", False)]
    assert "1 failed: bad.onnx" in data["summary"]


def test_fold_json_is_parseable(conv_bn_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fold", str(conv_bn_file), "-o", str(tmp_path / "f.onnx"),
                                      "--format", "json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["verify"]["ok"] is True
    assert data["report"]["counts"]["folded"] == 1


def test_missing_input_is_exit_1_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fold", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 1
    assert "no such file" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_usage_error_is_exit_2(conv_bn_file: Path) -> None:
    result = CliRunner().invoke(cli, ["fold", str(conv_bn_file)])
    assert result.exit_code == 2


def test_bench_onnx_file_json(conv_bn_file: Path) -> None:
    result = CliRunner().invoke(cli, ["bench", str(conv_bn_file), "--iterations", "3", "--warmup", "1",
                                      "--ort-opt", "disabled", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    variants = {row["variant"] for row in data["rows"]}
    assert variants == {"unfolded", "folded"}
    assert data["batchnorm_folded"] == 1
    folded = next(r for r in data["rows"] if r["variant"] == "folded")
    assert folded["max_rel"] < 1e-4


def test_fold_verification_takes_shapes_of_dynamic_dims(tmp_path: Path, rng: np.random.Generator) -> None:
    model = conv_bn(rng, spatial=("T",))
    path, out = tmp_path / "seq.onnx", tmp_path / "folded.onnx"
    onnx.save(model, path)
    refused = CliRunner().invoke(cli, ["fold", str(path), "-o", str(out)])
    assert refused.exit_code == 1
    assert "dynamic dimension 'T' on axis 2 (Nx4xT); give its size with --shape x:1x4x8" in refused.stderr
    assert not out.exists()
    result = CliRunner().invoke(cli, ["fold", str(path), "-o", str(out), "--shape", "x:1x4x8"])
    assert result.exit_code == 0, result.output
    assert op_count(onnx.load(out), "BatchNormalization") == 0


def test_summary_counts_constant_tails_apart_from_batchnorm() -> None:
    from foldnorm.fold.report import FoldRecord, FoldReport

    report = FoldReport([FoldRecord("Mul", "m", "affine", "folded", "folded into Conv", "conv"),
                         FoldRecord("Add", "a", "affine", "skipped", "varies along another axis")])
    assert report.summary().startswith("0/0 BatchNorm folded, 1/2 constant Mul/Add/Sub/Div folded; 1 folded")
    report.records = report.records[:0]
    assert report.summary().startswith("0/0 BatchNorm folded; 0 folded")


def test_fold_seed_reaches_the_verification(conv_bn_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fold", str(conv_bn_file), "-o", str(tmp_path / "f.onnx"), "--seed", "5",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verify"]["seed"] == 5


def test_failed_verification_shows_the_report_and_writes_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    # Fresh noise on every run: the folded model cannot be proved equal to the input, so verification fails.
    path, out, report = tmp_path / "noisy.onnx", tmp_path / "folded.onnx", tmp_path / "report.json"
    model = conv_bn(rng, cin=3, spatial=(16, 16), bn_out="b", tail=["n = RandomNormalLike (b)", "y = Add (b, n)"])
    onnx.save(model, path)
    text = CliRunner().invoke(cli, ["fold", str(path), "-o", str(out), "--report", str(report)])
    assert text.exit_code == 3, text.output
    assert "1/1 BatchNorm folded" in text.stdout
    assert "verify: NOT equivalent" in text.stdout
    assert "error: the folded model differs" in text.stderr and "nothing was written" in text.stderr
    assert json.loads(report.read_text())["counts"]["folded"] == 1
    assert not out.exists()
    data = CliRunner().invoke(cli, ["fold", str(path), "-o", str(out), "--format", "json"])
    assert data.exit_code == 3
    parsed = json.loads(data.stdout)
    assert (parsed["verify"]["ok"], parsed["output"]) == (False, None)
