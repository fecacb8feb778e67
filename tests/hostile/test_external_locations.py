"""Item 1: an external-data location that leaves the model's directory is refused before anything is opened."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.builders import conv_bn
from support.cli import assert_user_error, run, snapshot
from support.hostile import external_entry, save_external, tensor

import foldnorm
from foldnorm.errors import InvalidModelError

SECRET = b"top secret bytes " * 64


def _escaping(tmp_path: Path, rng: np.random.Generator, how: str) -> tuple[Path, str]:
    """A model in tmp_path/m whose weight W points out of m/ (`how`); returns the model and its location."""
    (tmp_path / "m").mkdir()
    (tmp_path / "secret.bin").write_bytes(SECRET)
    path = save_external(conv_bn(rng, cin=3), tmp_path / "m" / "model.onnx")
    location = {
        "dotdot": "../secret.bin",
        "absolute": str(tmp_path / "secret.bin"),
        "inner dotdot": "sub/../../secret.bin",
        "symlink": "link.bin",
        "symlinked dir": "up/secret.bin",
    }[how]
    if how == "symlink":
        os.symlink(tmp_path / "secret.bin", tmp_path / "m" / "link.bin")
    if how == "symlinked dir":
        os.symlink(tmp_path, tmp_path / "m" / "up")
    model = onnx.load(path, load_external_data=False)
    external_entry(tensor(model, "W"), "location", location)
    external_entry(tensor(model, "W"), "offset", "0")
    onnx.save(model, path)
    return path, location


HOW = ["dotdot", "absolute", "inner dotdot", "symlink", "symlinked dir"]
COMMANDS = {
    "fold": ["fold", "{m}", "-o", "{out}"],
    "fold --no-verify": ["fold", "{m}", "-o", "{out}", "--no-verify"],
    "inspect": ["inspect", "{m}"],
    "verify": ["verify", "{good}", "{m}"],
    "bench": ["bench", "{m}", "--iterations", "1", "--warmup", "0", "--ort-opt", "disabled"],
}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_refuses_a_location_outside_the_model_directory(how: str, command: str, tmp_path: Path,
                                                            rng: np.random.Generator) -> None:
    model, location = _escaping(tmp_path, rng, how)
    good = tmp_path / "good.onnx"
    onnx.save(conv_bn(rng, cin=3), good)
    out = tmp_path / "out.onnx"
    before = snapshot(tmp_path)
    result = run([a.format(m=model, out=out, good=good) for a in COMMANDS[command]])
    assert_user_error(result, model, "outside the model's directory")
    assert "'W'" in result.stderr and location in result.stderr
    assert snapshot(tmp_path) == before  # nothing written, the secret never copied


@pytest.mark.parametrize("how", HOW)
def test_api_raises_invalid_model_error(how: str, tmp_path: Path, rng: np.random.Generator) -> None:
    model, _ = _escaping(tmp_path, rng, how)
    for call in (lambda: foldnorm.load_model(model), lambda: foldnorm.fold_model(model),
                 lambda: foldnorm.compare_models(model, model),
                 lambda: foldnorm.fold_file(model, tmp_path / "o.onnx", verify=False)):
        with pytest.raises(InvalidModelError, match="tensor 'W'"):
            call()
    assert not (tmp_path / "o.onnx").exists()


def test_data_in_a_subdirectory_or_behind_an_inner_symlink_is_fine(tmp_path: Path, rng: np.random.Generator) -> None:
    """Locations that stay inside the directory still work: a subdirectory, a symlink to a file beside it."""
    original = conv_bn(rng, cin=3)
    path = tmp_path / "model.onnx"
    (tmp_path / "weights").mkdir()
    onnx.save(original, path, save_as_external_data=True, location="weights/model.data", size_threshold=0)
    os.symlink(tmp_path / "weights" / "model.data", tmp_path / "alias.data")
    model = onnx.load(path, load_external_data=False)
    external_entry(tensor(model, "W"), "location", "alias.data")
    onnx.save(model, path)
    result = foldnorm.fold_file(path, tmp_path / "folded.onnx")
    assert result.report.batchnorm_folded == 1 and result.verify is not None and result.verify.ok
