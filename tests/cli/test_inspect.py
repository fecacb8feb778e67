"""`foldnorm inspect`: every normalization node listed with its verdict; nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import bn_inputs, bn_params, conv_bn


def write_model(rng: np.random.Generator, path: Path) -> None:
    """Conv -> BN `h` (folds) -> Relu -> BN `i` (nothing linear before it) -> InstanceNorm `y`."""
    inits = {**bn_params("b", 6, rng), "ln_s": rng.normal(1, 0.3, 6).astype(np.float32),
             "ln_b": rng.normal(0, 0.3, 6).astype(np.float32)}
    onnx.save_model(conv_bn(rng, spatial=(6, 6), bn_out="h", inits=inits, tail=[
        "r = Relu (h)", f"i = BatchNormalization (r, {bn_inputs('b')})", "y = InstanceNormalization (i, ln_s, ln_b)",
    ]), str(path))


def test_inspect_lists_verdicts_and_writes_nothing(rng: np.random.Generator, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    write_model(rng, model)
    before = model.read_bytes()
    result = CliRunner().invoke(cli, ["inspect", str(model), "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["report"]
    assert [(r["node"], r["outcome"]) for r in report["records"]] == [("h", "folded"), ("i", "kept"), ("y", "kept")]
    assert "Relu" in report["records"][1]["reason"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert model.read_bytes() == before
    text = CliRunner().invoke(cli, ["inspect", str(model)])
    assert text.exit_code == 0
    assert "1/2 BatchNorm folded" in text.stdout


def test_inspect_missing_file_is_a_user_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 1
    assert "no such file" in result.output
