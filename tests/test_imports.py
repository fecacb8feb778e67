"""`import foldnorm` and `foldnorm --help` must not load torch, onnxruntime, tensorrt, openvino or matplotlib;
`foldnorm fold --no-verify` loads none of them, nor foldnorm's benchmark, verification or export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.builders import conv_bn

import foldnorm

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


def test_fold_without_verification_loads_only_what_it_needs(tmp_path: Path, rng: np.random.Generator) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    foldnorm.save_model(conv_bn(rng), src)
    code = ("import json, sys\nfrom foldnorm.cli.main import main\n"
            f"sys.argv = ['foldnorm', 'fold', {str(src)!r}, '-o', {str(out)!r}, '--no-verify']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print(json.dumps(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert out.is_file() and "foldnorm.fold.engine" in loaded
    unwanted = [*HEAVY, "foldnorm.bench", "foldnorm.verify", "foldnorm.export", "onnx_ir", "onnxscript"]
    assert [m for m in loaded if any(m == u or m.startswith(u + ".") for u in unwanted)] == []


def test_public_names_resolve_lazily() -> None:
    code = ("import sys, foldnorm\nbefore = set(sys.modules)\n"
            "names = [getattr(foldnorm, n) for n in foldnorm.__all__]\n"
            "print(int('foldnorm.workflows' in before), int('foldnorm.workflows' in sys.modules), "
            "int(set(foldnorm.__all__) <= set(dir(foldnorm))))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["0", "1", "1"]
    with pytest.raises(AttributeError, match="no attribute 'fold_everything'"):
        foldnorm.fold_everything  # noqa: B018
