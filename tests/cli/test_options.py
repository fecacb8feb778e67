"""The shared options: every command keeps the options it had, and the choices come from the library's types."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from foldnorm.cli.main import cli

# The option column of each command's --help, in order (a command may gain options, never lose or rename one).
HELP_OPTIONS = {
    "export": ["-o, --output PATH", "--input-shape, --shape TEXT", "--dtype [float32|float16|bfloat16]",
               "--opset INTEGER RANGE", "--exporter [dynamo|legacy]", "--static", "--external-data", "--train-ok",
               "--format [text|json]", "-h, --help"],
    "fold": ["-o, --output PATH", "--in-place", "--jobs INTEGER RANGE", "--verify / --no-verify",
             "--standalone-bn [keep|affine]", "--list-rules", "--skip RULE", "--only RULE", "--report PATH",
             "--shape, --input-shape NAME:1x3x224x224", "--seed INTEGER RANGE", "--format [text|json]", "-h, --help"],
    "inspect": ["--standalone-bn [keep|affine]", "--list-rules", "--skip RULE", "--only RULE", "--format [text|json]",
                "-h, --help"],
    "verify": ["--batch-sizes TEXT", "--shape, --input-shape NAME:1x3x224x224", "--seed INTEGER RANGE",
               "--samples INTEGER RANGE", "--inputs PATH", "--rtol FLOAT RANGE", "--atol FLOAT RANGE",
               "--structure / --no-structure", "--format [text|json]", "-h, --help"],
    "bench": ["--backend [ort-cpu|ort-cuda|ort-trt|tensorrt|torch|openvino|all]", "--ort-opt TEXT", "--precision TEXT",
              "--threads INTEGER RANGE", "--batch-size INTEGER RANGE", "--max-batch-size INTEGER RANGE",
              "--input-shape, --shape TEXT", "--warmup INTEGER RANGE", "--min-time FLOAT RANGE",
              "--iterations INTEGER RANGE", "--seed INTEGER RANGE", "--exporter [dynamo|legacy]",
              "--cache-dir DIRECTORY", "--cuda-graph", "-o, --output DIRECTORY", "--plot",
              "--format [text|json|csv|markdown]", "-h, --help"],
    "models": ["--format [text|json]", "-h, --help"],
}


def _in_order(expected: list[str], found: list[str]) -> bool:
    rest = iter(found)
    return all(option in rest for option in expected)


@pytest.mark.parametrize("command", list(HELP_OPTIONS))
def test_help_lists_the_same_options_as_before(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    found = re.findall(r"^  (-\S.*?)(?=\s{2,}|$)", result.output, flags=re.M)
    assert _in_order(HELP_OPTIONS[command], found), found


@pytest.mark.parametrize(("args", "message"), [
    (["--ort-opt", "disabled,fast"], "Invalid value for --ort-opt: 'fast' is not in disabled, basic, extended, all"),
    (["--precision", ","], "Invalid value for --precision: ',' is not in fp32, fp16"),
    (["--exporter", "onnx"], "Invalid value for '--exporter': 'onnx' is not one of 'dynamo', 'legacy'."),
    (["--format", "html"], "'html' is not one of 'text', 'json', 'csv', 'markdown'."),
])
def test_bench_choices_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "m.onnx", *args])
    assert result.exit_code == 2
    assert message in result.stderr
