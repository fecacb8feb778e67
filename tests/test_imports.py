"""`import foldnorm` and `foldnorm --help` must not load torch, onnxruntime, tensorrt, openvino or matplotlib."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "onnxruntime", "tensorrt", "openvino", "matplotlib")


@pytest.mark.parametrize(
    "code",
    [
        "import foldnorm",
        "import sys; from foldnorm.cli.main import cli; sys.argv = ['foldnorm', '--help']\n"
        "try:\n    cli()\nexcept SystemExit:\n    pass",
    ],
    ids=["import", "help"],
)
def test_heavy_modules_stay_unloaded(code: str) -> None:
    probe = f"{code}\nimport sys\nprint('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "LOADED:"


def test_no_top_level_cli_or_models_package() -> None:
    code = "import importlib.util as u; print(u.find_spec('cli'), u.find_spec('models'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "None None"
