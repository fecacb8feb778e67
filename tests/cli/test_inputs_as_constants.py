"""`--inputs-as-constants` on `fold` and `inspect`: initializers also listed as graph inputs fold as constants, and
the report's notes say so (in the text after the summary line, in the JSON as `notes`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli
from support.builders import listed_model


@pytest.mark.parametrize("command", ["fold", "inspect"])
def test_inputs_as_constants_turns_the_refusal_into_a_fold(tmp_path: Path, rng: np.random.Generator,
                                                           command: str) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(listed_model(rng, 8), path)
    output = ["-o", str(tmp_path / "o.onnx")] if command == "fold" else []
    args = [command, str(path), "--format", "json", *output]
    without = CliRunner().invoke(cli, args)
    assert without.exit_code == 0, without.output
    report = json.loads(without.stdout)["report"]
    assert report["records"][0]["outcome"] == "skipped" and "--inputs-as-constants" in report["records"][0]["reason"]
    assert report["notes"] == []
    with_it = CliRunner().invoke(cli, [*args, "--inputs-as-constants"])
    assert with_it.exit_code == 0, with_it.output
    report = json.loads(with_it.stdout)["report"]
    assert report["records"][0]["outcome"] == "folded"
    assert report["notes"][0].startswith("5 initializers also listed as graph inputs were read as constants")
    text = CliRunner().invoke(cli, [command, str(path), *output, "--inputs-as-constants"])
    assert "\nnote: 5 initializers also listed as graph inputs" in text.stdout
