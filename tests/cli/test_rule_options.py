"""`--list-rules`, `--skip RULE` and `--only RULE` on `fold` (file and directory) and `inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import conv_bn, op_count

from foldnorm.fold.rules import RULES

OFF = "rule conv-bn is turned off (--skip conv-bn)"


@pytest.fixture
def model(tmp_path: Path, rng: np.random.Generator) -> Path:
    path = tmp_path / "in" / "m.onnx"
    path.parent.mkdir()
    onnx.save(conv_bn(rng), path)
    return path


@pytest.mark.parametrize("command", ["fold", "inspect"])
def test_list_rules_prints_each_rule_on_one_line_without_a_model(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--list-rules"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [rule.name for rule in RULES]
    assert all(line.endswith(rule.summary) for line, rule in zip(lines, RULES, strict=True))
    assert len({line.index(rule.summary) for line, rule in zip(lines, RULES, strict=True)}) == 1  # one column


def test_fold_skip_keeps_the_bn_reports_why_and_still_verifies(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(cli, ["fold", str(model), "-o", str(out), "--skip", "conv-bn", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (record,) = data["report"]["records"]
    assert (record["outcome"], record["reason"]) == ("skipped", OFF)
    assert data["verify"]["ok"] and op_count(onnx.load(out), "BatchNormalization") == 1


def test_fold_only_repeats_and_text_shows_the_reason(model: Path, tmp_path: Path) -> None:
    args = ["fold", str(model), "-o", str(tmp_path / "out.onnx"), "--only", "bn-conv", "--only", "gemm-bn"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "rule conv-bn is turned off (not in --only bn-conv, gemm-bn)" in result.stdout
    assert "0/1 BatchNorm folded" in result.stdout


def test_fold_only_the_rule_that_applies_folds(model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["fold", str(model), "-o", str(tmp_path / "out.onnx"), "--only", "conv-bn"])
    assert result.exit_code == 0, result.output
    assert "1/1 BatchNorm folded" in result.stdout


def test_fold_directory_takes_skip(model: Path, tmp_path: Path) -> None:
    out_dir, report = tmp_path / "out", tmp_path / "report.json"
    out_dir.mkdir()
    result = CliRunner().invoke(cli, ["fold", str(model.parent), "-o", str(out_dir), "--jobs", "2",
                                      "--skip", "conv-bn", "--report", str(report)])
    assert result.exit_code == 0, result.output
    (item,) = json.loads(report.read_text())["items"]
    assert item["ok"] and item["message"].startswith("0/1 BatchNorm folded; 0 folded, 1 skipped")
    assert op_count(onnx.load(out_dir / "m.onnx"), "BatchNormalization") == 1


def test_inspect_takes_skip_and_only(model: Path) -> None:
    skipped = CliRunner().invoke(cli, ["inspect", str(model), "--skip", "conv-bn", "--format", "json"])
    assert skipped.exit_code == 0, skipped.output
    assert [r["reason"] for r in json.loads(skipped.stdout)["report"]["records"]] == [OFF]
    only = CliRunner().invoke(cli, ["inspect", str(model), "--only", "conv-bn", "--format", "json"])
    assert [r["outcome"] for r in json.loads(only.stdout)["report"]["records"]] == ["folded"]


@pytest.mark.parametrize("command", ["fold", "inspect"])
@pytest.mark.parametrize("option", ["--skip", "--only"])
def test_unknown_rule_is_a_usage_error_listing_the_valid_ones(model: Path, tmp_path: Path, command: str,
                                                              option: str) -> None:
    args = [command, str(model), option, "fuse-bn"] + (["-o", str(tmp_path / "out.onnx")] if command == "fold" else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert f"{option}: no fold rule is named 'fuse-bn'; use one of conv-bn, conv-transpose-bn" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.onnx").exists()
